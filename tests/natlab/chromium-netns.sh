#!/bin/sh
exec ip netns exec "$NATLAB_NS" /usr/bin/chromium ${NATLAB_PROXY:+"--proxy-server=$NATLAB_PROXY"} "$@"
