// The SDK as a package: its JSDoc type-checks (tsc --checkJs), the committed TypeScript declarations
// (web/sdk/traverse.d.ts) are what tsc generates from it today, the examples compile against them, and the package's
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
  run(['-p', path.join(sdk, 'tsconfig.json'), '--outDir', out]);
  const fresh = fs.readFileSync(path.join(out, 'traverse.d.ts'), 'utf8');
  const committed = fs.readFileSync(path.join(sdk, 'traverse.d.ts'), 'utf8');
  assert.ok(
    fresh === committed,
    'web/sdk/traverse.d.ts is stale: run `npm run types` in tests/sdk and commit it ' +
      `(${committed.length} committed vs ${fresh.length} generated characters)`,
  );
});

test('the examples (React hook and component) compile against the declarations', (t) => {
  if (skipWithoutTsc(t)) return;
  run(['-p', path.join(root, 'examples/tsconfig.json')]);
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
