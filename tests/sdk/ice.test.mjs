// Unit test of the ICE servers the SDK hands a peer connection (docs/sdk.md, "Peer connections"): what every
// browser takes, whatever the app or an older server gave.
//
//   node --test tests/sdk/
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';

const source = fs.readFileSync(new URL('../../web/sdk/traverse.js', import.meta.url), 'utf8');
const sdk = await import(`data:text/javascript;base64,${Buffer.from(source).toString('base64')}`);

test("stun: URLs lose ?transport and servers without URLs go (Chrome refuses the whole configuration over either)", () => {
  const warnings = [];
  const warn = console.warn;
  console.warn = (m) => warnings.push(m);
  try {
    const turn = { urls: ['turn:t.example.com:3478?transport=udp'], username: 'u', credential: 'c' };
    const cleaned = sdk._usableIceServers([
      { urls: 'stun:t.example.com:3478?transport=udp' },
      { urls: [] },
      { urls: ['stuns:t.example.com', ''] },
      turn,
    ]);
    assert.deepEqual(cleaned, [{ urls: ['stun:t.example.com:3478'] }, { urls: ['stuns:t.example.com'] }, turn]);
    assert.equal(warnings.length, 1, 'said once');
    // Already usable: the same servers, nothing said.
    assert.deepEqual(sdk._usableIceServers([turn]), [turn]);
    assert.equal(warnings.length, 1);
  } finally {
    console.warn = warn;
  }
});
