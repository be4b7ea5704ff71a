package proxy

// Compatibility with real clients (issue 4): database/sql with lib/pq, pgx
// COPY, psql \copy, pgbench and node-postgres, each through pgmoat for two
// tenants, checking results and isolation rather than only that they ran.

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/lib/pq"

	"github.com/pgmoat/pgmoat/config"
	"github.com/pgmoat/pgmoat/internal/pgtest"
)

// tenantPolicy is the demo schema's policy shape (NULLIF form, DESIGN.md
// section 10) for a table with a tenant_id column.
const tenantPolicy = `
ALTER TABLE %[1]s ENABLE ROW LEVEL SECURITY;
ALTER TABLE %[1]s FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON %[1]s FOR ALL
    USING (tenant_id = NULLIF(current_setting('app.current_tenant_id', true), ''))
    WITH CHECK (tenant_id = NULLIF(current_setting('app.current_tenant_id', true), ''));
GRANT SELECT, INSERT, UPDATE, DELETE ON %[1]s TO pgmoat;
`

// tenantColumn defaults to the session's tenant, so that rows inserted
// without a tenant_id land with it.
const tenantColumn = `tenant_id text NOT NULL DEFAULT NULLIF(current_setting('app.current_tenant_id', true), '') CHECK (tenant_id <> '')`

// compatTables are the protected tables these tests write to, in their own
// schema so that the demo schema's rows and psql's listings of public stay
// as other tests expect them: compat.items for inserts and COPY (rows are
// labelled with a per-test batch and deleted afterwards), and pgbench-like
// tables where accounts 1-100 and branch 1 belong to acme, accounts 101-200
// and branch 2 to globex.
var compatTables = `
CREATE SCHEMA compat AUTHORIZATION app_owner;
GRANT USAGE ON SCHEMA compat TO pgmoat;
SET ROLE app_owner;
CREATE TABLE compat.items (` + tenantColumn + `, batch text NOT NULL, name text NOT NULL, qty int NOT NULL);
CREATE TABLE compat.branches (bid int PRIMARY KEY, ` + tenantColumn + `, bbalance int NOT NULL DEFAULT 0);
CREATE TABLE compat.accounts (aid int PRIMARY KEY, ` + tenantColumn + `, abalance int NOT NULL DEFAULT 0, filler char(84));
CREATE TABLE compat.history (` + tenantColumn + `, aid int NOT NULL, bid int NOT NULL, delta int NOT NULL, mtime timestamptz NOT NULL DEFAULT now());
` + fmt.Sprintf(tenantPolicy, "compat.items") +
	fmt.Sprintf(tenantPolicy, "compat.branches") +
	fmt.Sprintf(tenantPolicy, "compat.accounts") +
	fmt.Sprintf(tenantPolicy, "compat.history") + `
RESET ROLE;
INSERT INTO compat.branches (bid, tenant_id) VALUES (1, 'acme'), (2, 'globex');
INSERT INTO compat.accounts (aid, tenant_id)
    SELECT g, CASE WHEN g <= 100 THEN 'acme' ELSE 'globex' END FROM generate_series(1, 200) g;
`

var compatOnce struct {
	sync.Once
	err error
}

// startCompatProxy creates the compatibility tables in the shared cluster
// (once per test binary) and then starts a proxy, whose catalog must see
// them.
func startCompatProxy(t *testing.T) *testProxy {
	t.Helper()
	c := pgtest.Shared(t)
	compatOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		compatOnce.err = c.Exec(ctx, "app", compatTables)
	})
	if compatOnce.err != nil {
		t.Fatalf("create compatibility tables: %v", compatOnce.err)
	}
	return startProxy(t, nil)
}

// superuser connects straight to the cluster's app database as postgres,
// past pgmoat and RLS, to see what really landed.
func superuser(t *testing.T, p *testProxy) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), p.cluster.DSN("postgres", "", "app"))
	if err != nil {
		t.Fatalf("connect as superuser: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// newBatch returns a label unique to this test run for compat.items rows,
// and deletes the rows carrying it when the test ends.
func newBatch(t *testing.T, p *testProxy) string {
	t.Helper()
	batch := fmt.Sprintf("%s-%d", t.Name(), time.Now().UnixNano())
	su := superuser(t, p)
	t.Cleanup(func() {
		if _, err := su.Exec(context.Background(), "delete from compat.items where batch = $1", batch); err != nil {
			t.Errorf("clean up batch %s: %v", batch, err)
		}
	})
	return batch
}

// batchTenants returns the tenant of every compat.items row of batch, as the
// superuser sees them.
func batchTenants(t *testing.T, su *pgx.Conn, batch string) []string {
	t.Helper()
	return tenantsOf(t, su, "select tenant_id from compat.items where batch = $1", batch)
}

// directCount counts rows of table belonging to tenant, as the superuser.
func directCount(t *testing.T, su *pgx.Conn, table, tenant string) int {
	t.Helper()
	var n int
	err := su.QueryRow(context.Background(), "select count(*) from "+table+" where tenant_id = $1", tenant).Scan(&n)
	if err != nil {
		t.Fatalf("count %s rows of %s: %v", table, tenant, err)
	}
	return n
}

type tenantUser struct{ user, pass, tenant, other string }

var tenantUsers = []tenantUser{
	{"acme_app", "acme_secret", "acme", "globex"},
	{"globex_app", "globex_secret", "globex", "acme"},
}

// pqCode is the SQLSTATE of a lib/pq error, or "" for any other error.
func pqCode(err error) string {
	var pe *pq.Error
	if errors.As(err, &pe) {
		return string(pe.Code)
	}
	return ""
}

// TestCompatLibPQ drives database/sql with lib/pq: parameters, transactions,
// prepared statement reuse, blocks returning *pq.Error 42501, and a pool
// that stays usable afterwards.
func TestCompatLibPQ(t *testing.T) {
	p := startCompatProxy(t)
	su := superuser(t, p)
	ctx := context.Background()
	type variant struct {
		tenantUser
		name, opts string
	}
	var variants []variant
	for _, u := range tenantUsers {
		variants = append(variants, variant{u, u.tenant, ""},
			// Parse, Bind and Execute in one round trip, binary parameters.
			variant{u, u.tenant + " binary_parameters", " binary_parameters=yes"})
	}
	for _, u := range variants {
		t.Run(u.name, func(t *testing.T) {
			db, err := sql.Open("postgres", p.dsn(u.user, u.pass)+u.opts)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { db.Close() })
			db.SetMaxOpenConns(2)

			queryTenants := func(q string, args ...any) []string {
				t.Helper()
				rows, err := db.QueryContext(ctx, q, args...)
				if err != nil {
					t.Fatalf("%s: %v", q, err)
				}
				defer rows.Close()
				var got []string
				for rows.Next() {
					var s string
					if err := rows.Scan(&s); err != nil {
						t.Fatal(err)
					}
					got = append(got, s)
				}
				if err := rows.Err(); err != nil {
					t.Fatalf("%s: %v", q, err)
				}
				return got
			}
			count := func(q string, args ...any) int {
				t.Helper()
				var n int
				if err := db.QueryRowContext(ctx, q, args...).Scan(&n); err != nil {
					t.Fatalf("%s: %v", q, err)
				}
				return n
			}

			t.Run("parameters", func(t *testing.T) {
				wantOnly(t, queryTenants("select tenant_id from orders where amount > $1", 0), u.tenant)
				wantOnly(t, queryTenants("select c.tenant_id from customers c join orders o on o.customer_id = c.id where o.status = any($1)", pq.Array([]string{"new", "paid"})), u.tenant)
				if got, want := count("select count(*) from orders where amount >= $1", 0), directCount(t, su, "orders", u.tenant); got != want {
					t.Errorf("orders: %d rows, want %d", got, want)
				}
				if n := count("select count(*) from orders where tenant_id = $1", u.other); n != 0 {
					t.Errorf("%d rows of %s visible", n, u.other)
				}
			})

			t.Run("prepared statement reuse", func(t *testing.T) {
				// One connection, so the statement is prepared once and
				// executed many times under its name.
				conn, err := db.Conn(ctx)
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close()
				stmt, err := conn.PrepareContext(ctx, "select count(*) from orders where status = $1")
				if err != nil {
					t.Fatal(err)
				}
				defer stmt.Close()
				for i := 0; i < 3; i++ {
					for _, status := range []string{"new", "paid", "shipped", "cancelled"} {
						var got, want int
						if err := stmt.QueryRowContext(ctx, status).Scan(&got); err != nil {
							t.Fatalf("%s: %v", status, err)
						}
						err := su.QueryRow(ctx, "select count(*) from orders where tenant_id = $1 and status = $2", u.tenant, status).Scan(&want)
						if err != nil {
							t.Fatal(err)
						}
						if got != want {
							t.Errorf("round %d, status %s: %d rows, want %d", i, status, got, want)
						}
					}
				}
				// A statement prepared on the pool is re-prepared on
				// whichever connection runs it.
				pooled, err := db.PrepareContext(ctx, "select tenant_id from customers where id > $1")
				if err != nil {
					t.Fatal(err)
				}
				defer pooled.Close()
				for i := 0; i < 6; i++ {
					var s string
					if err := pooled.QueryRowContext(ctx, 0).Scan(&s); err != nil || s != u.tenant {
						t.Fatalf("pooled statement: %q %v", s, err)
					}
				}
			})

			t.Run("transaction", func(t *testing.T) {
				batch := newBatch(t, p)
				tx, err := db.BeginTx(ctx, nil)
				if err != nil {
					t.Fatal(err)
				}
				for i := 1; i <= 3; i++ {
					if _, err := tx.ExecContext(ctx, "insert into compat.items (name, qty, batch) values ($1, $2, $3)", "pq", i, batch); err != nil {
						t.Fatal(err)
					}
				}
				var n int
				if err := tx.QueryRowContext(ctx, "select count(*) from compat.items where batch = $1", batch).Scan(&n); err != nil || n != 3 {
					t.Fatalf("in transaction: %d rows, %v", n, err)
				}
				if err := tx.Commit(); err != nil {
					t.Fatal(err)
				}
				if got := batchTenants(t, su, batch); len(got) != 3 {
					t.Fatalf("committed rows: %v, want 3 of %s", got, u.tenant)
				} else {
					wantOnly(t, got, u.tenant)
				}

				// A failed insert for the other tenant aborts the
				// transaction; a rollback leaves nothing behind.
				tx, err = db.BeginTx(ctx, nil)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := tx.ExecContext(ctx, "insert into compat.items (name, qty, batch) values ('pq', 9, $1)", batch); err != nil {
					t.Fatal(err)
				}
				_, err = tx.ExecContext(ctx, "insert into compat.items (tenant_id, name, qty, batch) values ($1, 'pq', 9, $2)", u.other, batch)
				if code := pqCode(err); code != "42501" {
					t.Fatalf("insert for %s in transaction: %v (SQLSTATE %q), want 42501", u.other, err, code)
				}
				if err := tx.Rollback(); err != nil {
					t.Fatal(err)
				}
				if got := batchTenants(t, su, batch); len(got) != 3 {
					t.Fatalf("after rollback: %v, want the 3 committed rows", got)
				}
			})

			t.Run("copy in", func(t *testing.T) {
				// COPY FROM STDIN into a temporary table, then INSERT ...
				// SELECT: rows land with the session's tenant.
				batch := newBatch(t, p)
				tx, err := db.BeginTx(ctx, nil)
				if err != nil {
					t.Fatal(err)
				}
				defer tx.Rollback()
				if _, err := tx.ExecContext(ctx, "create temp table tmp_pq (name text, qty int) on commit drop"); err != nil {
					t.Fatal(err)
				}
				stmt, err := tx.PrepareContext(ctx, pq.CopyIn("tmp_pq", "name", "qty"))
				if err != nil {
					t.Fatal(err)
				}
				const n = 500
				for i := 0; i < n; i++ {
					if _, err := stmt.ExecContext(ctx, fmt.Sprint("pq-", i), i); err != nil {
						t.Fatal(err)
					}
				}
				if _, err := stmt.ExecContext(ctx); err != nil {
					t.Fatalf("end COPY: %v", err)
				}
				if err := stmt.Close(); err != nil {
					t.Fatal(err)
				}
				if _, err := tx.ExecContext(ctx, "insert into compat.items (name, qty, batch) select name, qty, $1 from tmp_pq", batch); err != nil {
					t.Fatal(err)
				}
				if err := tx.Commit(); err != nil {
					t.Fatal(err)
				}
				got := batchTenants(t, su, batch)
				if len(got) != n {
					t.Fatalf("%d rows landed, want %d", len(got), n)
				}
				wantOnly(t, got, u.tenant)
			})

			t.Run("blocked", func(t *testing.T) {
				conn, err := db.Conn(ctx)
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close()
				for _, c := range []struct {
					sql  string
					args []any
				}{
					{"select * from audit_raw", nil},
					{"select * from audit_raw where tenant_id = $1", []any{u.tenant}},
					{"insert into orders (tenant_id, amount) values ($1, 1)", []any{u.other}},
					{"set app.current_tenant_id = '" + u.other + "'", nil},
				} {
					_, err := conn.ExecContext(ctx, c.sql, c.args...)
					if code := pqCode(err); code != "42501" {
						t.Errorf("%s: %v (SQLSTATE %q), want *pq.Error 42501", c.sql, err, code)
					}
					// The same connection, then the pool, still work.
					var s string
					if err := conn.QueryRowContext(ctx, "select tenant_id from orders limit 1").Scan(&s); err != nil || s != u.tenant {
						t.Fatalf("connection after %q: %q %v", c.sql, s, err)
					}
				}
				wantOnly(t, queryTenants("select tenant_id from orders"), u.tenant)
			})
		})
	}
}

// copyRows is the CopyFromSource for (name, qty) rows named prefix-i.
func copyRows(prefix string, n int) pgx.CopyFromSource {
	return pgx.CopyFromSlice(n, func(i int) ([]any, error) {
		return []any{fmt.Sprintf("%s-%05d", prefix, i), int32(i)}, nil
	})
}

// TestCompatCopyPgx covers COPY with pgx. PostgreSQL refuses COPY FROM into a
// table with RLS ("COPY FROM not supported with row-level security",
// 0A000), so the bulk load goes through a temporary table and INSERT ...
// SELECT (DESIGN.md section 10); COPY TO STDOUT sees only the tenant's rows.
func TestCompatCopyPgx(t *testing.T) {
	p := startCompatProxy(t)
	su := superuser(t, p)
	ctx := context.Background()
	const n = 5000 // several CopyData messages per direction
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement} {
		t.Run(mode.String(), func(t *testing.T) {
			batch := newBatch(t, p)
			acme := p.connect(t, "acme_app", "acme_secret", mode)
			globex := p.connect(t, "globex_app", "globex_secret", mode)

			t.Run("CopyFrom protected table", func(t *testing.T) {
				_, err := acme.CopyFrom(ctx, pgx.Identifier{"compat", "items"}, []string{"name", "qty"}, copyRows(batch, 3))
				// pgmoat allows it (the table is protected) and relays
				// PostgreSQL's own refusal.
				if code := sqlstate(err); code != "0A000" {
					t.Fatalf("COPY FROM into an RLS table: %v, want PostgreSQL's 0A000", err)
				}
				wantOnly(t, tenantsOf(t, acme, currentTenant), "acme")
			})

			t.Run("CopyFrom temp table", func(t *testing.T) {
				tx, err := acme.Begin(ctx)
				if err != nil {
					t.Fatal(err)
				}
				defer tx.Rollback(ctx)
				if _, err := tx.Exec(ctx, "create temp table tmp_items (name text, qty int) on commit drop"); err != nil {
					t.Fatal(err)
				}
				copied, err := tx.CopyFrom(ctx, pgx.Identifier{"tmp_items"}, []string{"name", "qty"}, copyRows(batch, n))
				if err != nil || copied != n {
					t.Fatalf("CopyFrom: %d rows, %v", copied, err)
				}
				tag, err := tx.Exec(ctx, "insert into compat.items (name, qty, batch) select name, qty, $1 from tmp_items", batch)
				if err != nil || tag.RowsAffected() != n {
					t.Fatalf("insert ... select: %v %v", tag, err)
				}
				if err := tx.Commit(ctx); err != nil {
					t.Fatal(err)
				}
				got := batchTenants(t, su, batch)
				if len(got) != n {
					t.Fatalf("%d rows landed, want %d", len(got), n)
				}
				wantOnly(t, got, "acme")
				var seen int
				if err := globex.QueryRow(ctx, "select count(*) from compat.items where batch = $1", batch).Scan(&seen); err != nil || seen != 0 {
					t.Fatalf("globex sees %d of acme's rows (%v)", seen, err)
				}
			})

			t.Run("CopyFail", func(t *testing.T) {
				// A source that fails mid-stream makes pgx send CopyFail
				// after some CopyData; the server aborts the COPY.
				tx, err := acme.Begin(ctx)
				if err != nil {
					t.Fatal(err)
				}
				defer tx.Rollback(ctx)
				if _, err := tx.Exec(ctx, "create temp table tmp_fail (name text, qty int) on commit drop"); err != nil {
					t.Fatal(err)
				}
				errSource := errors.New("source failed")
				src := pgx.CopyFromFunc(func() func() ([]any, error) {
					i := 0
					return func() ([]any, error) {
						if i++; i > 3000 {
							return nil, errSource
						}
						return []any{"x", int32(i)}, nil
					}
				}())
				// The server answers CopyFail with 57014 ("COPY from stdin
				// failed: <the client's message>").
				_, err = tx.CopyFrom(ctx, pgx.Identifier{"tmp_fail"}, []string{"name", "qty"}, src)
				if sqlstate(err) != "57014" || !strings.Contains(err.Error(), errSource.Error()) {
					t.Fatalf("CopyFrom with a failing source: %v, want 57014 carrying %q", err, errSource)
				}
				if err := tx.Rollback(ctx); err != nil {
					t.Fatal(err)
				}
				wantOnly(t, tenantsOf(t, acme, currentTenant), "acme")
				wantOnly(t, tenantsOf(t, acme, "select tenant_id from orders"), "acme")
			})

			t.Run("CopyFrom other tenant", func(t *testing.T) {
				tx, err := acme.Begin(ctx)
				if err != nil {
					t.Fatal(err)
				}
				defer tx.Rollback(ctx)
				if _, err := tx.Exec(ctx, "create temp table tmp_foreign (tenant_id text, name text, qty int) on commit drop"); err != nil {
					t.Fatal(err)
				}
				rows := [][]any{{"acme", batch + "-ok", int32(1)}, {"globex", batch + "-foreign", int32(2)}}
				if _, err := tx.CopyFrom(ctx, pgx.Identifier{"tmp_foreign"}, []string{"tenant_id", "name", "qty"}, pgx.CopyFromRows(rows)); err != nil {
					t.Fatal(err)
				}
				_, err = tx.Exec(ctx, "insert into compat.items (tenant_id, name, qty, batch) select tenant_id, name, qty, $1 from tmp_foreign", batch)
				if sqlstate(err) != "42501" {
					t.Fatalf("insert of a globex row: %v, want 42501", err)
				}
				tx.Rollback(ctx)
				if got := batchTenants(t, su, batch); len(got) != n {
					t.Fatalf("%d rows in the batch, want the %d committed before", len(got), n)
				}
				wantOnly(t, tenantsOf(t, acme, currentTenant), "acme")
			})

			t.Run("CopyTo", func(t *testing.T) {
				for _, c := range []struct {
					conn   *pgx.Conn
					tenant string
					sql    string
					want   int
				}{
					{acme, "acme", "copy (select tenant_id, name from compat.items where batch = '" + batch + "') to stdout", n},
					{globex, "globex", "copy (select tenant_id, name from compat.items where batch = '" + batch + "') to stdout", 0},
					{acme, "acme", "copy (select tenant_id from orders) to stdout", directCount(t, su, "orders", "acme")},
					{globex, "globex", "copy (select tenant_id from orders) to stdout (format csv)", directCount(t, su, "orders", "globex")},
					{globex, "globex", "copy orders (tenant_id) to stdout", directCount(t, su, "orders", "globex")},
					{acme, "acme", "copy compat.items (tenant_id, name) to stdout", directCount(t, su, "compat.items", "acme")},
				} {
					var buf bytes.Buffer
					tag, err := c.conn.PgConn().CopyTo(ctx, &buf, c.sql)
					if err != nil {
						t.Fatalf("%s as %s: %v", c.sql, c.tenant, err)
					}
					lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
					if buf.Len() == 0 {
						lines = nil
					}
					if len(lines) != c.want || tag.RowsAffected() != int64(c.want) {
						t.Fatalf("%s as %s: %d lines, tag %q, want %d", c.sql, c.tenant, len(lines), tag, c.want)
					}
					for _, l := range lines {
						if tenant, _, _ := strings.Cut(l, "\t"); tenant != c.tenant {
							t.Fatalf("%s as %s: line %q", c.sql, c.tenant, l)
						}
					}
				}
				// Blocked: an unprotected table, inside COPY too.
				for _, q := range []string{"copy audit_raw to stdout", "copy (select * from audit_raw) to stdout"} {
					_, err := acme.PgConn().CopyTo(ctx, &bytes.Buffer{}, q)
					if sqlstate(err) != "42501" {
						t.Errorf("%s: %v, want 42501", q, err)
					}
				}
				wantOnly(t, tenantsOf(t, acme, currentTenant), "acme")
			})
		})
	}
}

// streamCounter counts the bytes written to it and closes reached once
// they pass threshold.
type streamCounter struct {
	n         atomic.Int64
	threshold int64
	once      sync.Once
	reached   chan struct{}
}

func (w *streamCounter) Write(b []byte) (int, error) {
	if w.n.Add(int64(len(b))) >= w.threshold {
		w.once.Do(func() { close(w.reached) })
	}
	return len(b), nil
}

// TestCompatStreaming checks that pgmoat relays a result as the server
// sends it, rather than holding it until the server stops sending. The
// result is ordered and locked row by row (FOR SHARE), and the superuser
// holds a lock on its last row, so the server sends all rows but the last
// and then waits: the client must receive them while it waits. The
// deadline only turns a proxy that holds the rows into a failure instead of
// a hang.
func TestCompatStreaming(t *testing.T) {
	p := startCompatProxy(t)
	su := superuser(t, p)
	ctx := context.Background()
	batch := newBatch(t, p)
	const rows, width = 2000, 1000 // about 2 MB, well over pgmoat's 8 KB read buffer
	_, err := su.Exec(ctx, `insert into compat.items (tenant_id, batch, name, qty)
		select 'acme', $1, repeat('x', $2), g from generate_series(1, $3) g`, batch, width, rows+1)
	if err != nil {
		t.Fatal(err)
	}
	const sql = "select name from compat.items where batch = $1 order by qty for share"
	for _, c := range []struct {
		name string
		run  func(conn *pgx.Conn, w *streamCounter) (int64, error)
	}{
		{"copy to stdout", func(conn *pgx.Conn, w *streamCounter) (int64, error) {
			q := "copy (" + strings.Replace(sql, "$1", "'"+batch+"'", 1) + ") to stdout"
			tag, err := conn.PgConn().CopyTo(ctx, w, q)
			return tag.RowsAffected(), err
		}},
		{"query rows", func(conn *pgx.Conn, w *streamCounter) (int64, error) {
			rs, err := conn.Query(ctx, sql, batch)
			if err != nil {
				return 0, err
			}
			defer rs.Close()
			var n int64
			for rs.Next() {
				n++
				w.Write(rs.RawValues()[0])
			}
			return n, rs.Err()
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			conn := p.connect(t, "acme_app", "acme_secret", pgx.QueryExecModeCacheStatement)
			lock, err := su.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer lock.Rollback(ctx)
			if _, err := lock.Exec(ctx, "select 1 from compat.items where batch = $1 and qty = $2 for update", batch, rows+1); err != nil {
				t.Fatal(err)
			}
			// The server keeps at most its 8 KB output buffer while it
			// waits; everything else must reach the client.
			w := &streamCounter{threshold: rows*width - 64<<10, reached: make(chan struct{})}
			type result struct {
				n   int64
				err error
			}
			done := make(chan result, 1)
			go func() {
				n, err := c.run(conn, w)
				done <- result{n, err}
			}()
			select {
			case <-w.reached:
			case r := <-done:
				t.Fatalf("finished while the last row was locked: %d rows, %v", r.n, r.err)
			case <-time.After(20 * time.Second):
				got := w.n.Load()
				lock.Rollback(ctx)
				<-done
				t.Fatalf("the client got %d bytes of the ~%d the server sent before waiting for the lock: pgmoat holds the stream",
					got, rows*width)
			}
			if err := lock.Rollback(ctx); err != nil {
				t.Fatal(err)
			}
			if r := <-done; r.err != nil || r.n != rows+1 {
				t.Fatalf("after the lock: %d rows, %v; want %d", r.n, r.err, rows+1)
			}
		})
	}
}

// TestCompatLargeRow: limits.max_message_size bounds what clients send
// (config.Limits "bounds what clients can cost"); a row the server sends
// may be up to 1 GB and must reach the client as it does directly. The
// limit is lowered to 1 MiB so that a 2 MiB row shows it cheaply.
func TestCompatLargeRow(t *testing.T) {
	p := startProxy(t, func(c *config.Config) { c.Limits.MaxMessageSize = 1 << 20 })
	ctx := context.Background()
	const size = 2 << 20
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement} {
		t.Run(mode.String(), func(t *testing.T) {
			conn := p.connect(t, "acme_app", "acme_secret", mode)
			var s string
			if err := conn.QueryRow(ctx, "select repeat('x', $1)", size).Scan(&s); err != nil || len(s) != size {
				t.Fatalf("a %d-byte row: got %d bytes, %v", size, len(s), err)
			}
			var buf bytes.Buffer
			if _, err := conn.PgConn().CopyTo(ctx, &buf, fmt.Sprintf("copy (select repeat('x', %d)) to stdout", size)); err != nil || buf.Len() != size+1 {
				t.Fatalf("a %d-byte COPY row: got %d bytes, %v", size, buf.Len(), err)
			}
			wantOnly(t, tenantsOf(t, conn, currentTenant), "acme")
		})
	}
}

// TestCompatStreamingCopyIn is the other direction: psql streams COPY data
// as it reads its input and then waits for more; the server must get the
// rows sent so far while psql waits. The deadline only turns a proxy that
// holds them into a failure instead of a hang.
func TestCompatStreamingCopyIn(t *testing.T) {
	p := startCompatProxy(t)
	su := superuser(t, p)
	ctx := context.Background()
	const rows, width = 2000, 1000
	script := filepath.Join(t.TempDir(), "copy.sql")
	err := os.WriteFile(script, []byte(`begin;
create temp table tmp_stream (name text) on commit drop;
\copy tmp_stream from pstdin
select count(*) from tmp_stream;
commit;
`), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(p.addr)
	cmd := exec.Command(psqlPath(t), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-f", script,
		"host="+host+" port="+port+" user=acme_app dbname=app")
	cmd.Env = append(cmd.Environ(), "PGPASSWORD=acme_secret", "PGCONNECT_TIMEOUT=10")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer stdin.Close()
	line := strings.Repeat("x", width) + "\n"
	for i := 0; i < rows; i++ {
		if _, err := io.WriteString(stdin, line); err != nil {
			t.Fatalf("write to psql: %v\n%s", err, errb.String())
		}
	}
	// psql now waits for more input: the server must have all but what
	// libpq and psql keep (under 8 KB each) and the message it is reading.
	const progress = "select coalesce(max(bytes_processed), 0) from pg_stat_progress_copy where command = 'COPY FROM'"
	var processed int64
	for deadline := time.Now().Add(20 * time.Second); ; {
		if err := su.QueryRow(ctx, progress).Scan(&processed); err != nil {
			t.Fatal(err)
		}
		if processed >= rows*width-64<<10 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the server processed %d bytes of the ~%d psql sent before waiting: pgmoat holds the stream", processed, rows*width)
		}
		time.Sleep(20 * time.Millisecond)
	}
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("psql: %v\n%s", err, errb.String())
	}
	if got, want := out.String(), fmt.Sprintf("%d\n", rows); got != want {
		t.Fatalf("psql: %q, want %q\n%s", got, want, errb.String())
	}
}

// TestCompatCopyPsql runs psql's \copy in both directions. psql does not
// expand variables in \copy, so the batch label is spliced into the script.
func TestCompatCopyPsql(t *testing.T) {
	p := startCompatProxy(t)
	su := superuser(t, p)
	batch := newBatch(t, p)
	lit := "'" + strings.ReplaceAll(batch, "'", "''") + "'"
	data := filepath.Join(t.TempDir(), "items.tsv")
	if err := os.WriteFile(data, []byte("delta\t4\t"+batch+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	script := `\copy (select tenant_id from orders order by id) to stdout
begin;
create temp table tmp_in (name text, qty int) on commit drop;
\copy tmp_in from stdin
alpha	1
beta	2
gamma	3
\.
insert into compat.items (name, qty, batch) select name, qty, ` + lit + ` from tmp_in;
commit;
\copy (select tenant_id, name, qty from compat.items where batch = ` + lit + ` order by name) to stdout
\copy compat.items (name, qty, batch) from '` + data + `'
select 'done';
`
	acmeOut, acmeErr := p.psql(t, "acme_app", "acme_secret", script)
	want := strings.Repeat("acme\n", directCount(t, su, "orders", "acme")) +
		"acme\talpha\t1\nacme\tbeta\t2\nacme\tgamma\t3\n" + "done\n"
	if acmeOut != want {
		t.Errorf("acme: stdout %q, want %q\nstderr: %s", acmeOut, want, acmeErr)
	}
	// PostgreSQL itself refuses COPY FROM into a table with RLS; that must
	// be the only error.
	if strings.Count(acmeErr, "ERROR:") != 1 || !strings.Contains(acmeErr, "ERROR:  0A000:") {
		t.Errorf("acme: stderr %q, want only the 0A000 of \\copy into compat.items", acmeErr)
	}
	if got := batchTenants(t, su, batch); len(got) != 3 {
		t.Errorf("rows of the batch: %v, want 3", got)
	} else {
		wantOnly(t, got, "acme")
	}

	globexOut, globexErr := p.psql(t, "globex_app", "globex_secret", `\copy (select tenant_id from orders order by id) to stdout
\copy (select tenant_id, name from compat.items where batch = `+lit+`) to stdout
\copy orders (tenant_id) to stdout
\copy audit_raw to stdout
`)
	if strings.Count(globexErr, "ERROR:") != 1 || !strings.Contains(globexErr, "ERROR:  42501:") {
		t.Errorf("globex: stderr %q, want only the 42501 of \\copy audit_raw", globexErr)
	}
	n := directCount(t, su, "orders", "globex")
	if want := strings.Repeat("globex\n", 2*n); globexOut != want {
		t.Errorf("globex: stdout %q, want %q", globexOut, want)
	}
}

// pgbenchScript is a TPC-B-like transaction on the compat tables over
// every account and branch, both tenants': RLS must make the other tenant's
// rows invisible, so its updates touch nothing, and the history row lands
// with the session's tenant through the column default.
const pgbenchScript = `\set aid random(1, 200)
\set bid random(1, 2)
\set delta random(-5000, 5000)
BEGIN;
UPDATE compat.accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM compat.accounts WHERE aid = :aid;
UPDATE compat.branches SET bbalance = bbalance + :delta WHERE bid = :bid;
INSERT INTO compat.history (aid, bid, delta) VALUES (:aid, :bid, :delta);
END;
`

// pgbenchPath finds pgbench: on PATH, else next to the newest server.
func pgbenchPath(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("pgbench"); err == nil {
		return p
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/pgbench")
	if len(matches) == 0 {
		t.Fatal("pgbench not found: it ships with the PostgreSQL server package (postgresql-15), which .ci/run installs")
	}
	return matches[len(matches)-1]
}

// TestCompatPgbench runs pgbench as acme in every query mode and checks the
// compat tables afterwards as the superuser: globex's rows are untouched and
// acme's balances add up to acme's history.
func TestCompatPgbench(t *testing.T) {
	p := startCompatProxy(t)
	su := superuser(t, p)
	ctx := context.Background()
	script := filepath.Join(t.TempDir(), "bench.sql")
	if err := os.WriteFile(script, []byte(pgbenchScript), 0o644); err != nil {
		t.Fatal(err)
	}
	host, port, _ := net.SplitHostPort(p.addr)
	scalar := func(q string) int64 {
		t.Helper()
		var n int64
		if err := su.QueryRow(ctx, q).Scan(&n); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		return n
	}
	const clients, txns = 2, 50
	for _, mode := range []string{"simple", "extended", "prepared"} {
		t.Run(mode, func(t *testing.T) {
			before := scalar("select count(*) from compat.history")
			cmd := exec.Command(pgbenchPath(t), "-n", "-t", strconv.Itoa(txns), "-c", strconv.Itoa(clients), "-M", mode,
				"-f", script, "-h", host, "-p", port, "-U", "acme_app", "app")
			cmd.Env = append(cmd.Environ(), "PGPASSWORD=acme_secret", "PGCONNECT_TIMEOUT=10")
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("pgbench -M %s: %v\n%s", mode, err, out)
			}
			if want := fmt.Sprintf("number of transactions actually processed: %d/%d", clients*txns, clients*txns); !bytes.Contains(out, []byte(want)) {
				t.Fatalf("pgbench output lacks %q:\n%s", want, out)
			}
			if got := scalar("select count(*) from compat.history") - before; got != clients*txns {
				t.Errorf("%d history rows added, want %d", got, clients*txns)
			}
			for _, c := range []struct {
				what string
				sql  string
				want int64
			}{
				{"history rows of another tenant", "select count(*) from compat.history where tenant_id <> 'acme'", 0},
				{"globex accounts changed", "select count(*) from compat.accounts where tenant_id = 'globex' and abalance <> 0", 0},
				{"globex branch changed", "select count(*) from compat.branches where tenant_id = 'globex' and bbalance <> 0", 0},
				{"acme accounts that do not match acme's history", `
select count(*) from compat.accounts a
where a.tenant_id = 'acme'
  and a.abalance <> coalesce((select sum(h.delta) from compat.history h where h.aid = a.aid), 0)`, 0},
				{"acme branch does not match acme's history", `
select count(*) from compat.branches b
where b.tenant_id = 'acme'
  and b.bbalance <> coalesce((select sum(h.delta) from compat.history h where h.bid = b.bid), 0)`, 0},
			} {
				if got := scalar(c.sql); got != c.want {
					t.Errorf("%s: %d, want %d", c.what, got, c.want)
				}
			}
			// Half the random accounts are acme's: some updates must have
			// reached them (all missing has probability 2^-100).
			if n := scalar("select count(*) from compat.history where aid <= 100"); n == 0 {
				t.Error("no history row for an acme account")
			}
		})
	}
}

// nodeDir holds the node-postgres script and its lockfile.
const nodeDir = "testdata/node"

// nodeSetup checks for node and npm and installs the locked dependencies
// when node_modules is missing.
func nodeSetup(t *testing.T) string {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatal("node not found: the node-postgres compatibility test needs Node.js and npm on PATH")
	}
	if _, err := os.Stat(filepath.Join(nodeDir, "node_modules", "pg", "package.json")); err == nil {
		return node
	}
	npm, err := exec.LookPath("npm")
	if err != nil {
		t.Fatal("npm not found: the node-postgres compatibility test installs pg with `npm ci` in " + nodeDir)
	}
	cmd := exec.Command(npm, "ci", "--no-audit", "--no-fund")
	cmd.Dir = nodeDir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("npm ci in %s: %v\n%s", nodeDir, err, out)
	}
	return node
}

// nodeResult is what compat.js prints.
type nodeResult struct {
	Tenant            string         `json:"tenant"`
	OrderTenants      []string       `json:"orderTenants"`
	OrderCount        int            `json:"orderCount"`
	OtherTenantCount  int            `json:"otherTenantCount"`
	ByStatus          map[string]int `json:"byStatus"`
	ConcurrentTenants []string       `json:"concurrentTenants"`
	TxInsertTenant    string         `json:"txInsertTenant"`
	TxSees            int            `json:"txSees"`
	AfterRollback     int            `json:"afterRollback"`
	OtherInsertCode   string         `json:"otherInsertCode"`
	BlockedCode       string         `json:"blockedCode"`
	BlockedParamCode  string         `json:"blockedParamCode"`
	AfterBlock        string         `json:"afterBlock"`
}

// TestCompatNode runs node-postgres (pg from npm) with a Pool through pgmoat
// for both tenants.
func TestCompatNode(t *testing.T) {
	node := nodeSetup(t)
	p := startCompatProxy(t)
	su := superuser(t, p)
	host, port, _ := net.SplitHostPort(p.addr)
	for _, u := range tenantUsers {
		t.Run(u.tenant, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, node, "compat.js", u.other)
			cmd.Dir = nodeDir
			cmd.Env = append(os.Environ(), "PGHOST="+host, "PGPORT="+port, "PGUSER="+u.user,
				"PGPASSWORD="+u.pass, "PGDATABASE=app", "PGSSLMODE=disable")
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("node compat.js: %v\nstdout: %s\nstderr: %s", err, out, stderr.String())
			}
			var r nodeResult
			if err := json.Unmarshal(out, &r); err != nil {
				t.Fatalf("decode %q: %v", out, err)
			}
			byStatus := map[string]int{}
			for _, s := range []string{"new", "paid", "shipped", "cancelled"} {
				var n int
				if err := su.QueryRow(context.Background(), "select count(*) from orders where tenant_id = $1 and status = $2", u.tenant, s).Scan(&n); err != nil {
					t.Fatal(err)
				}
				byStatus[s] = n
			}
			checks := []struct {
				what      string
				got, want any
			}{
				{"tenant setting", r.Tenant, u.tenant},
				{"tenants of orders", fmt.Sprint(r.OrderTenants), fmt.Sprint([]string{u.tenant})},
				{"order count", r.OrderCount, directCount(t, su, "orders", u.tenant)},
				{"other tenant's orders", r.OtherTenantCount, 0},
				{"orders by status (named statement)", fmt.Sprint(r.ByStatus), fmt.Sprint(byStatus)},
				{"tenants of concurrent queries", fmt.Sprint(r.ConcurrentTenants), fmt.Sprint([]string{u.tenant})},
				{"tenant of the row inserted in a transaction", r.TxInsertTenant, u.tenant},
				{"rows seen in the transaction", r.TxSees, 1},
				{"rows after rollback", r.AfterRollback, 0},
				{"insert for the other tenant", r.OtherInsertCode, "42501"},
				{"blocked statement", r.BlockedCode, "42501"},
				{"blocked statement with parameters", r.BlockedParamCode, "42501"},
				{"tenant after the blocks", r.AfterBlock, u.tenant},
			}
			for _, c := range checks {
				if c.got != c.want {
					t.Errorf("%s: got %v, want %v", c.what, c.got, c.want)
				}
			}
		})
	}
}

// TestCompatListen: LISTEN/NOTIFY channels are shared by all tenants, so
// pgmoat refuses them by default (issue 3); the connection stays usable.
func TestCompatListen(t *testing.T) {
	p := startProxy(t, nil)
	ctx := context.Background()
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement} {
		t.Run(mode.String(), func(t *testing.T) {
			conn := p.connect(t, "acme_app", "acme_secret", mode)
			for _, q := range []string{
				"listen compat_channel",
				`LISTEN "compat channel"`,
				"notify compat_channel, 'hello'",
				"select pg_notify('compat_channel', 'hello')",
			} {
				_, err := conn.Exec(ctx, q)
				if sqlstate(err) != "42501" {
					t.Errorf("%s: %v, want 42501", q, err)
				}
				wantOnly(t, tenantsOf(t, conn, "select tenant_id from orders"), "acme")
			}
			// Inside a transaction the refusal aborts it, like any error.
			tx, err := conn.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(ctx, "listen compat_channel"); sqlstate(err) != "42501" {
				t.Errorf("listen in a transaction: %v, want 42501", err)
			}
			if err := tx.Rollback(ctx); err != nil {
				t.Fatal(err)
			}
			wantOnly(t, tenantsOf(t, conn, currentTenant), "acme")
		})
	}
}
