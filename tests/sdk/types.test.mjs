// The SDK as a package: its JSDoc type-checks (tsc --checkJs), the committed TypeScript declarations
// (web/sdk/traverse.d.ts) are what tsc generates from it today (through declarations.mjs, which leaves out what is
// tagged `@internal`), they show the public API only, the examples compile against them, and the package's
// version is the SDK's. `npm ci` in tests/sdk installs TypeScript (scripts/test.sh does); without it these tests are
// skipped, unless TRAVERSE_REQUIRE_PEERS=1.
//
//   (cd tests/sdk && npm ci) && node --test tests/sdk/
//   (cd tests/sdk && npm run types)   # regenerate web/sdk/traverse.d.ts after changing the SDK
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '../..');
const tsc = path.join(here, 'node_modules/typescript/bin/tsc');
const sdk = path.join(root, 'web/sdk');

function skipWithoutTsc(t) {
  if (fs.existsSync(tsc)) return false;
  const why = 'SKIP: TypeScript not installed (cd tests/sdk && npm ci)';
  if (process.env.TRAVERSE_REQUIRE_PEERS === '1') throw new Error(`${why}, and TRAVERSE_REQUIRE_PEERS=1`);
  console.log(why);
  t.skip(why);
  return true;
}

/** Runs tsc; returns its output, or throws with it. */
function run(args) {
  try {
    return execFileSync(process.execPath, [tsc, ...args], { cwd: root, encoding: 'utf8', stdio: 'pipe' });
  } catch (e) {
    throw new Error(`tsc ${args.join(' ')} failed:\n${e.stdout}${e.stderr}`);
  }
}

test('the SDK type-checks from its JSDoc, and traverse.d.ts is what tsc generates from it', (t) => {
  if (skipWithoutTsc(t)) return;
  const out = fs.mkdtempSync(path.join(os.tmpdir(), 'traverse-dts-'));
  t.after(() => fs.rmSync(out, { recursive: true, force: true }));
  try {
    const args = [path.join(here, 'declarations.mjs'), '--outDir', out];
    execFileSync(process.execPath, args, { encoding: 'utf8', stdio: 'pipe' });
  } catch (e) {
    throw new Error(`declarations.mjs failed:\n${e.stdout}${e.stderr}`);
  }
  const fresh = fs.readFileSync(path.join(out, 'traverse.d.ts'), 'utf8');
  const committed = fs.readFileSync(path.join(sdk, 'traverse.d.ts'), 'utf8');
  assert.ok(
    fresh === committed,
    'web/sdk/traverse.d.ts is stale: run `npm run types` in tests/sdk and commit it ' +
      `(${committed.length} committed vs ${fresh.length} generated characters)`,
  );
});

test('traverse.d.ts shows the public API only: no internal member, class or export', async (t) => {
  if (skipWithoutTsc(t)) return;
  const { default: ts } = await import('typescript');
  const parse = (file) => ts.createSourceFile(file, fs.readFileSync(file, 'utf8'), ts.ScriptTarget.Latest, true);
  const dts = parse(path.join(sdk, 'traverse.d.ts'));
  const classes = new Set();
  const members = []; // `Class.member`, with `private` for a private one
  const exported = [];
  const visit = (node) => {
    if (ts.isClassDeclaration(node) && node.name) {
      classes.add(node.name.text);
      for (const m of node.members) {
        if (!m.name) continue;
        const isPrivate = ts.getModifiers(m)?.some((k) => k.kind === ts.SyntaxKind.PrivateKeyword);
        members.push(`${isPrivate ? 'private ' : ''}${node.name.text}.${m.name.getText(dts)}`);
      }
    }
    if (ts.isExportSpecifier(node)) exported.push(node.name.text);
    ts.forEachChild(node, visit);
  };
  visit(dts);
  // A `_` member is the module's own: `@private` (declared `private`) or `@internal` (left out), never public.
  assert.deepEqual(members.filter((m) => /^\w+\._/.test(m)), [], 'public underscore members in traverse.d.ts');
  // What traverse.js tags `@internal` (members shared between its classes, the tests' `export {…}`) is not there.
  const internal = new Set(); // `Class.member`, and exported names
  const findInternal = (node) => {
    if (ts.getJSDocTags(node).some((tag) => tag.tagName.text === 'internal')) {
      const target = ts.isBinaryExpression(node) ? node.left : node; // `/** @internal */ this._x = …`
      let owner = node.parent;
      while (owner && !ts.isClassDeclaration(owner)) owner = owner.parent;
      if (ts.isExportDeclaration(node) && node.exportClause && ts.isNamedExports(node.exportClause)) {
        for (const e of node.exportClause.elements) internal.add(e.name.text);
      } else if (owner?.name && target.name) internal.add(`${owner.name.text}.${target.name.getText()}`);
    }
    ts.forEachChild(node, findInternal);
  };
  findInternal(parse(path.join(sdk, 'traverse.js')));
  assert.ok(internal.has('Room._send') && internal.has('_Recovery'), `@internal in traverse.js: ${[...internal]}`);
  const leaked = [...members.map((m) => m.replace(/^private /, '')), ...exported].filter((n) => internal.has(n));
  assert.deepEqual(leaked, [], '@internal names in traverse.d.ts');
  assert.deepEqual(exported.filter((e) => e.startsWith('_')), [], 'internal exports in traverse.d.ts');
  // Internal classes, declared only because an internal export or member named them.
  for (const name of ['Recovery', 'Session', 'Link', 'Sha256', 'FileTransfer']) {
    assert.ok(!classes.has(name), `traverse.d.ts declares the internal class ${name}`);
  }
  assert.ok(!/\bbrokenSince\b/.test(dts.text), "traverse.d.ts has Recovery's brokenSince");
  // The types a public signature names, and no other: one that only internals use (a `@typedef` in a comment that
  // says `@internal`: `Clock`, `RecoveryHost`, `SessionEvent`, `LinkHost`, `OutcomeReport`, …) is not declared.
  const types = dts.statements.filter(ts.isTypeAliasDeclaration);
  const isExported = (s) => ts.getModifiers(s)?.some((k) => k.kind === ts.SyntaxKind.ExportKeyword);
  const named = types.filter((s) => !isExported(s)).map((s) => s.name.text);
  assert.deepEqual(named, [], 'internal types that public signatures name (declared, not exported)');
  const publicTypes = ['IceServer', 'PeerInfo', 'RoomState', 'RoomStats', 'PeerOptions', 'ConnectOptions', 'PeerClose',
    'RoomEventMap', 'ConnectionDiagnosis', 'PeerEventMap', 'QualityGrade', 'ConnectionQuality', 'FileSource',
    'RecoveryOptions', 'RecoveryCause', 'SendFileOptions', 'FileErrorCode', 'FileProgress', 'FileSent',
    'FileReceived', 'FileCancel'];
  assert.deepEqual(types.map((s) => s.name.text).sort(), publicTypes.sort(), 'the types traverse.d.ts exports');
});

test("each type's description in traverse.d.ts is its own (one `@typedef` per JSDoc comment)", async (t) => {
  if (skipWithoutTsc(t)) return;
  const { default: ts } = await import('typescript');
  // tsc gives the text between two typedefs of one comment to the one before (and a property's to that property).
  const parse = (file) => ts.createSourceFile(file, fs.readFileSync(file, 'utf8'), ts.ScriptTarget.Latest, true);
  const shared = [];
  const findShared = (node) => {
    if (ts.isJSDoc(node) && !node.tags?.some((tag) => tag.tagName.text === 'internal')) {
      const names = (node.tags ?? []).filter(ts.isJSDocTypedefTag).map((tag) => tag.name?.getText());
      if (names.length > 1) shared.push(names.join(' + '));
    }
    ts.forEachChild(node, findShared);
    for (const d of node.jsDoc ?? []) findShared(d);
  };
  findShared(parse(path.join(sdk, 'traverse.js')));
  assert.deepEqual(shared, [], 'public typedefs that share a JSDoc comment in traverse.js');
  const dts = parse(path.join(sdk, 'traverse.d.ts'));
  /** A node's JSDoc description, without its tags. */
  const doc = (node) =>
    ts.getJSDocCommentsAndTags(node)
      .filter(ts.isJSDoc)
      .map((d) => ts.getTextOfJSDocComment(d.comment) ?? '')
      .join('\n');
  const types = new Map(dts.statements.filter(ts.isTypeAliasDeclaration).map((s) => [s.name.text, s]));
  const described = [...types.values()].map(doc).filter(Boolean);
  assert.equal(new Set(described).size, described.length, 'two types in traverse.d.ts share a description');
  const subjects = {
    PeerClose: /`Peer` closed/,
    RoomEventMap: /events of a `Room`/,
    PeerEventMap: /events of a `Peer`/,
    QualityGrade: /\bgrade\b/,
    ConnectionQuality: /`jitterMs`/,
    FileErrorCode: /file transfer ended/,
  };
  for (const [name, subject] of Object.entries(subjects)) {
    assert.ok(types.has(name), `traverse.d.ts declares ${name}`);
    assert.match(doc(types.get(name)), subject, `the description of ${name}`);
  }
  const type = types.get('SendFileOptions').type.members.find((m) => m.name?.getText() === 'type');
  assert.match(doc(type), /MIME type/, 'the description of SendFileOptions.type');
  assert.doesNotMatch(doc(type), /file transfer/, 'the description of SendFileOptions.type');
});

test('the examples (React hook and component) compile against the declarations', (t) => {
  if (skipWithoutTsc(t)) return;
  run(['-p', path.join(root, 'examples/tsconfig.json')]);
});

/** Runs tsc over `files` (name → TypeScript) in a temporary directory; returns its diagnostics, by file and line. */
function compile(t, files) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'traverse-ts-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  for (const [name, text] of Object.entries(files)) fs.writeFileSync(path.join(dir, name), text);
  const args = ['--noEmit', '--strict', '--target', 'es2022', '--module', 'es2022', '--moduleResolution', 'bundler'];
  let out = '';
  try {
    execFileSync(process.execPath, [tsc, ...args, '--lib', 'es2022,dom', ...Object.keys(files)], { cwd: dir, encoding: 'utf8', stdio: 'pipe' });
  } catch (e) {
    out = `${e.stdout}${e.stderr}`;
  }
  const errors = [...out.matchAll(/^(\S+)\((\d+),\d+\): error (TS\d+)/gm)].map((m) => `${m[1]}:${m[2]} ${m[3]}`);
  return { errors, out };
}

test('events are typed by name: a misspelt event or detail field, or an internal member, does not compile', (t) => {
  if (skipWithoutTsc(t)) return;
  const sdkPath = JSON.stringify(path.join(sdk, 'traverse.js'));
  const head = `import { connect, TraverseError, type Room, type Peer, type FileCancel } from ${sdkPath};\n` +
    'declare const room: Room;\ndeclare const peer: Peer;\ndeclare const err: TraverseError;\n';
  // Lines 5 on: each must compile.
  const good = head + [
    "room.on('peer-joined', (d) => d.peer.id.toUpperCase());",
    "room.on('peer-left', ({ peerId, reason }) => peerId + reason);",
    "peer.on('file', (f) => f.blob.size + f.sha256.length);",
    "peer.on('file-cancel', (c: FileCancel) => c.code === 'refused' && c.by === 'remote');",
    "peer.on('close', ({ by, reason }) => by === 'remote' && reason);",
    'const ready: Promise<Peer> = peer.ready;',
    "const by: 'local' | 'remote' | undefined = err.by;",
    "const code: string | undefined = err.file?.code;",
    "const dynamic: string = 'peer-joined';",
    'room.on(dynamic, (d) => d);',
    "void room.once('joined').then((j) => j.peerId);",
    "void peer.once('open');",
    "const off = (d: { data: any }) => d; peer.on('message', off); peer.off('message', off);",
    'void connect; void ready; void by; void code;',
    // What docs/sdk.md documents is declared (hiding the internals hid none of it).
    `import Traverse, * as api from ${sdkPath};`,
    'void [api.connect, api.filterIceServers, api.VERSION, api.PROTOCOL, api.RECONNECT_DELAYS_MS, api.FAST_RECONNECT];',
    'void [api.RESTART_DELAYS_MS, api.FILE_CHANNEL_LABEL, api.FILE_CHUNK_BYTES, api.Room, api.Peer, Traverse.connect];',
    'void [room.peerId, room.session, room.room, room.peers, room.iceServers, room.caps, room.state, room.lastSeq];',
    'void [room.unacknowledged, room.connections, room.stats.unsent, room.url, room.signal, room.broadcast];',
    'void [room.connect, room.leave, room.on, room.off, room.once, room.addEventListener];',
    'void [peer.pc, peer.channel, peer.ready, peer.polite, peer.remoteStreams, peer.send, peer.maxMessageBytes];',
    'void [peer.sendFile, peer.cancelFile, peer.addTrack, peer.getSelectedPair, peer.close, peer.on, peer.once];',
  ].join('\n') + '\n';
  const ok = compile(t, { 'good.ts': good });
  assert.deepEqual(ok.errors, [], ok.out);

  // Each of these lines (5 on) must fail, on its own line.
  const bad = head + [
    "room.on('peer-joind', (d) => d);",
    "room.on('peer-joined', (d) => d.peer.nmae);",
    "peer.on('file', (f) => f.blobb.size);",
    "peer.on('fiel-cancel', (c) => c);",
    "void room.once('resumd');",
    'const n: number = peer.ready;',
    'peer._readyWaiter.resolve(peer);',
    'room._session;',
    "err.by === 'elsewhere';",
    "room._send({ type: 'signal' }, false);",
    "peer._close(false, { by: 'local', reason: 'closed' });",
  ].join('\n') + '\n';
  const failed = compile(t, { 'bad.ts': bad });
  const lines = new Set(failed.errors.map((e) => Number(e.split(/[: ]/)[1])));
  for (let line = 5; line <= 15; line++) {
    assert.ok(lines.has(line), `bad.ts line ${line} (${bad.split('\n')[line - 1]}) compiled:\n${failed.out}`);
  }
});

test("the package's version is the SDK's VERSION, and it ships the module and its declarations", () => {
  const pkg = JSON.parse(fs.readFileSync(path.join(sdk, 'package.json'), 'utf8'));
  const source = fs.readFileSync(path.join(sdk, 'traverse.js'), 'utf8');
  assert.match(source, new RegExp(`export const VERSION = '${pkg.version.replace(/\./g, '\\.')}';`));
  // The server's version is checked against both in crates/web/tests/sdk.rs.
  assert.equal(pkg.type, 'module');
  assert.equal(pkg.exports['.'].import, './traverse.js');
  assert.equal(pkg.exports['.'].types, './traverse.d.ts');
  for (const f of ['traverse.js', 'traverse.d.ts', 'CHANGELOG.md']) {
    assert.ok(pkg.files.includes(f), `package.json files lists ${f}`);
    assert.ok(fs.existsSync(path.join(sdk, f)), `web/sdk/${f} exists`);
  }
  const changelog = fs.readFileSync(path.join(sdk, 'CHANGELOG.md'), 'utf8');
  assert.ok(changelog.includes(`## ${pkg.version}`), `CHANGELOG.md has an entry for ${pkg.version}`);
});
