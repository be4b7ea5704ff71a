// compat.js drives node-postgres (pg) through pgmoat for
// proxy/compat_test.go. It connects with the standard PG* environment
// variables (PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE), takes the other
// tenant's name as its only argument, and prints one JSON object with what it
// saw. Errors it expects are reported as SQLSTATE codes; anything unexpected
// exits non-zero with the error on stderr.
'use strict';

const { Pool } = require('pg');

// codeOf runs fn and returns the SQLSTATE it fails with, or 'no error'.
async function codeOf(fn) {
  try {
    await fn();
    return 'no error';
  } catch (err) {
    return err.code || String(err);
  }
}

async function main() {
  const other = process.argv[2];
  if (!other) throw new Error('usage: node compat.js OTHER_TENANT');
  const pool = new Pool({ max: 2, connectionTimeoutMillis: 10000 });
  const out = {};
  try {
    // Simple protocol (no parameters) and extended protocol (parameters).
    out.tenant = (await pool.query("select current_setting('app.current_tenant_id') as t")).rows[0].t;
    out.orderTenants = (await pool.query('select distinct tenant_id from orders order by 1')).rows.map((r) => r.tenant_id);
    out.orderCount = Number((await pool.query('select count(*) as n from orders where amount > $1', [0])).rows[0].n);
    out.otherTenantCount = Number((await pool.query('select count(*) as n from orders where tenant_id = $1', [other])).rows[0].n);

    // A named prepared statement, reused on the same pooled clients.
    const byStatus = {};
    for (const status of ['new', 'paid', 'new', 'paid', 'shipped', 'cancelled']) {
      const r = await pool.query({ name: 'orders_by_status', text: 'select count(*) as n from orders where status = $1', values: [status] });
      byStatus[status] = Number(r.rows[0].n);
    }
    out.byStatus = byStatus;

    // Several queries at once over the pool's two connections.
    const tenants = await Promise.all(Array.from({ length: 8 }, (_, i) =>
      pool.query('select tenant_id from customers where id > $1', [-i]).then((r) => r.rows.map((x) => x.tenant_id))));
    out.concurrentTenants = [...new Set(tenants.flat())].sort();

    // A transaction on one client: a row inserted in it is visible in it,
    // gone after ROLLBACK; an insert for the other tenant is refused.
    const client = await pool.connect();
    try {
      await client.query('BEGIN');
      const ins = await client.query(
        'insert into compat.items (name, qty, batch) values ($1, $2, $3) returning tenant_id',
        ['node', 7, 'node-tx']);
      out.txInsertTenant = ins.rows[0].tenant_id;
      out.txSees = Number((await client.query('select count(*) as n from compat.items where batch = $1', ['node-tx'])).rows[0].n);
      await client.query('ROLLBACK');
      out.afterRollback = Number((await client.query('select count(*) as n from compat.items where batch = $1', ['node-tx'])).rows[0].n);

      await client.query('BEGIN');
      out.otherInsertCode = await codeOf(() => client.query(
        'insert into compat.items (tenant_id, name, qty, batch) values ($1, $2, $3, $4)', [other, 'node', 1, 'node-tx']));
      await client.query('ROLLBACK');
    } finally {
      client.release();
    }

    // Blocked statements: SQLSTATE 42501, and the pool still works.
    out.blockedCode = await codeOf(() => pool.query('select * from audit_raw'));
    out.blockedParamCode = await codeOf(() => pool.query('select * from audit_raw where tenant_id = $1', [other]));
    out.afterBlock = (await pool.query("select current_setting('app.current_tenant_id') as t")).rows[0].t;
  } finally {
    await pool.end();
  }
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
