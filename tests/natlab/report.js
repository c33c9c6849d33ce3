// Prints the NAT lab's results (written by doctor.test.js and pairs.test.js) as the Markdown tables of
// docs/nat-lab.md.   node report.js RESULTS_DIR
import fs from 'node:fs';
import path from 'node:path';

const dir = process.argv[2];
const read = (name) => {
  try {
    return JSON.parse(fs.readFileSync(path.join(dir, name), 'utf8'));
  } catch {
    return null;
  }
};

const doctor = read('doctor.json');
if (doctor) {
  console.log('\n| site | built as (mapping / filtering / firewall) | doctor: mapping | doctor: filtering | doctor: blocked | verdict | result |');
  console.log('| --- | --- | --- | --- | --- | --- | --- |');
  for (const r of doctor) {
    console.log(`| ${r.site} | ${r.built} | ${r.mapping ?? '—'} | ${r.filtering ?? '—'} | ${r.blocked ?? '—'} | ${r.verdict ?? '—'} | ${r.outcome ?? '—'} |`);
  }
}

const pairs = read('pairs.json');
if (pairs) {
  console.log('\n| sites (A + B) | expected | doctor in A: direct with B | result | first pair (A side) | settled pair (A side; B side) | open after |');
  console.log('| --- | --- | --- | --- | --- | --- | --- |');
  for (const r of pairs) {
    const settled = (r.selected ?? '—').replace(/\|/g, '\\|');
    const outcome = r.outcome ?? '—';
    console.log(`| ${r.a} + ${r.b} | ${r.expect} | ${r.doctorSays ?? '—'} | ${outcome} | ${r.firstPair ?? '—'} | ${settled} | ${r.connectMs ?? '—'} ms |`);
  }
}
if (!doctor && !pairs) console.log(`natlab: no results in ${dir}`);
