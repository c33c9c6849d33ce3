#!/bin/sh
exec ip netns exec "$NATLAB_NS" /usr/bin/chromium "$@"
