// A component using `useTraverse`: the room's peers, a call to one of them over a data channel, and a file sent to
// it with a progress bar. Type-checked against the SDK's declarations (tests/sdk/types.test.mjs).
import { useEffect, useState } from 'react';
import type { FileReceived, Peer } from '@traverse-rtc/sdk';
import { useTraverse } from './useTraverse';

export function RoomView({ room: name, server }: { room: string; server: string }) {
  const { room, state, peers, error } = useTraverse({ room: name, url: `${server.replace(/^http/, 'ws')}/ws` });
  const [peer, setPeer] = useState<Peer | null>(null);
  const [lines, setLines] = useState<string[]>([]);
  const [progress, setProgress] = useState(0);
  const say = (line: string) => setLines((l) => [...l, line]);

  // Peers that call us.
  useEffect(() => room?.on('peer-connection', ({ peer }: { peer: Peer }) => setPeer(peer)), [room]);

  // What arrives from the peer.
  useEffect(() => {
    if (!peer) return;
    const offs = [
      peer.on('message', ({ data }: { data: string }) => say(`${peer.peerId}: ${data}`)),
      peer.on('file-progress', ({ bytes, size }: { bytes: number; size: number }) => setProgress(size ? bytes / size : 1)),
      peer.on('file', ({ name, size, sha256 }: FileReceived) => say(`received ${name} (${size} bytes, SHA-256 ${sha256})`)),
      peer.on('file-cancel', ({ name, by, reason }: { name: string; by: string; reason: string }) =>
        say(`${name} cancelled by ${by}: ${reason}`),
      ),
    ];
    return () => offs.forEach((off) => off());
  }, [peer]);

  if (error) return <p>Could not join: {error.message}</p>;
  if (!room) return <p>Joining {name}…</p>;

  const sendFile = async (file: File) => {
    if (!peer) return;
    try {
      const sent = await peer.sendFile(file, { onProgress: ({ bytes, size }) => setProgress(size ? bytes / size : 1) });
      say(`sent ${sent.name} in ${sent.ms} ms`);
    } catch (err) {
      say(`not sent: ${(err as Error).message}`);
    }
  };

  return (
    <div>
      <p>
        {state} as {room.peerId}
      </p>
      <ul>
        {peers.map((p) => (
          <li key={p.id}>
            {p.id} <button onClick={() => setPeer(room.connect(p.id))}>call</button>
          </li>
        ))}
      </ul>
      {peer && (
        <p>
          <button onClick={() => peer.send('hello')}>say hello</button>{' '}
          <input type="file" onChange={(e) => e.target.files?.[0] && sendFile(e.target.files[0])} />
          <progress value={progress} max={1} />
        </p>
      )}
      <pre>{lines.join('\n')}</pre>
    </div>
  );
}
