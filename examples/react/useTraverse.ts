// A React hook around the Traverse SDK: joins a room while the component is mounted, keeps the peer list and the
// room's state in React state, leaves on unmount. Copy it into your app; it needs `@traverse-rtc/sdk` (or the
// module from your server, see README.md) and React 18+.
import { useEffect, useState } from 'react';
import { connect, type ConnectOptions, type PeerInfo, type Room, type RoomState } from '@traverse-rtc/sdk';

export interface TraverseState {
  /** The joined room, or null while joining (and after an error). */
  room: Room | null;
  /** `connecting`, `open`, `reconnecting`, `closed`. */
  state: RoomState;
  /** The other peers of the room. */
  peers: PeerInfo[];
  /** Why the join failed (a `TraverseError`: `code` is the protocol's, e.g. `room-full`). */
  error: Error | null;
}

/**
 * Join `options.room` for as long as the calling component is mounted. A new room name (or URL, or token) leaves
 * the old room and joins the new one. Other options are read once per join.
 */
export function useTraverse(options: ConnectOptions): TraverseState {
  const [room, setRoom] = useState<Room | null>(null);
  const [state, setState] = useState<RoomState>('connecting');
  const [peers, setPeers] = useState<PeerInfo[]>([]);
  const [error, setError] = useState<Error | null>(null);

  useEffect(() => {
    let joined: Room | null = null;
    let cancelled = false;
    const offs: (() => void)[] = [];
    setState('connecting');
    setError(null);
    connect(options).then(
      (r) => {
        if (cancelled) {
          void r.leave(); // unmounted while joining
          return;
        }
        joined = r;
        const sync = () => {
          setPeers([...r.peers.values()]);
          setState(r.state);
        };
        for (const name of ['joined', 'peer-joined', 'peer-left', 'reconnecting', 'resumed', 'closed']) {
          offs.push(r.on(name, sync));
        }
        setRoom(r);
        sync();
      },
      (err: Error) => {
        if (cancelled) return;
        setError(err);
        setState('closed');
      },
    );
    return () => {
      cancelled = true;
      for (const off of offs) off();
      setRoom(null);
      void joined?.leave(); // the others see peer-left at once
    };
    // Rejoin when where or as whom we join changes; `meta` and the rest are read once per join.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [options.room, options.url, options.token]);

  return { room, state, peers, error };
}
