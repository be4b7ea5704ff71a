package proxy

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgmoat/pgmoat/config"
	"github.com/pgmoat/pgmoat/internal/pgtest"
)

// The policy end to end: a representative subset of the escape attempts of
// policy/testdata/corpus.txt, sent as tenant acme through the proxy to the
// demo database (where globex has rows in every table), must each be
// refused with 42501, leave the connection usable and the tenant unchanged,
// and let nothing of globex through: no row, notice or error text, and no
// change in the database.

// escapeAttempts are refused for every tenant session.
var escapeAttempts = []string{
	// relations the policy does not allow, wherever they hide
	"select * from audit_raw",
	"table audit_raw",
	"select * from orders o full join audit_raw a using (id)",
	"select * from customers c, lateral (select * from audit_raw where id = c.id) x",
	"select * from orders order by (select max(id) from audit_raw)",
	"select count(*) filter (where id in (select id from audit_raw)) from orders",
	"with recursive r as (select 1 as n union all select n + 1 from r, audit_raw where n < 3) select * from r",
	"with a as (insert into audit_raw (tenant_id, event) values ('acme', 'x') returning 1) select 1",
	"insert into customers (tenant_id, name) values ('acme', 'x') on conflict (id) do update set name = (select event from audit_raw limit 1)",
	"update orders set (amount, status) = (select 1, event from audit_raw limit 1)",
	"merge into orders o using (select * from audit_raw) a on o.id = a.id when matched then do nothing",
	"copy (with x as (select * from audit_raw) select * from x) to stdout",
	"explain (analyze, costs off) select * from orders where id in (select id from audit_raw)",
	"prepare pe1 as select * from orders o join audit_raw a on a.id = o.id",
	"declare c1 scroll cursor with hold for select * from orders, audit_raw",
	"create temp table t1 as select * from audit_raw",
	"create temp table t2 (id bigint references audit_raw (id))",
	`select * from U&"audit\005fraw"`,
	"select * from app.public.audit_raw",
	"select * from PUBLIC.AUDIT_RAW",
	"select * from orders where id = 1; select * from audit_raw",
	"insert into plans values (99, 'x', 1)",
	"lock table audit_raw",
	// name resolution: a temporary table may not shadow a real one
	"create temp table orders (id int, tenant_id text)",
	// system catalogs that show other sessions, statistics or secrets
	"select query from pg_catalog.pg_stat_activity",
	"select * from pg_stats where tablename = 'orders'",
	"select * from pg_locks",
	"update pg_settings set setting = 'off' where name = 'standard_conforming_strings'",
	// functions
	"select set_config('app.current_tenant_id', 'globex', false)",
	`select U&"set\005fconfig"('app.current_tenant_id', 'globex', false)`,
	"select query_to_xml('select * from audit_raw', true, false, '')",
	"select * from ts_stat('select to_tsvector(event) from audit_raw')",
	"select table_to_xml('audit_raw', true, false, '')",
	"select pg_read_file('/etc/passwd')",
	"select lo_import('/etc/passwd')",
	"select pg_terminate_backend(pid) from generate_series(1, 2) pid",
	"select pg_advisory_lock(1)",
	"select pg_notify('orders', 'x')",
	"select setval('orders_id_seq', 1)",
	"explain analyze select set_config('app.current_tenant_id', 'globex', true)",
	// settings
	"set app.current_tenant_id = 'globex'",
	"reset all",
	"set standard_conforming_strings = off",
	"set client_encoding = 'SJIS'",
	// statements
	"truncate orders",
	"copy (select 1) to program 'id'",
	"do $$ begin execute 'set app.current_tenant_id = ''globex'''; end $$",
	"listen orders",
	"alter role pgmoat set app.current_tenant_id = 'globex'",
	"create trigger trg before insert on orders for each row execute function pg_catalog.now()",
}

// readOnlyAttempts are refused for the read-only user only.
var readOnlyAttempts = []string{
	"insert into orders (tenant_id, amount) values ('acme', 1)",
	"select * from orders for update",
	"with d as (delete from orders returning *) select count(*) from d",
	"select nextval('orders_id_seq')",
}

// globexMarks are texts found only in globex's rows of the demo data.
var globexMarks = []string{"globex", "Hank", "Homer", "5000"}

func leaksGlobex(s string) bool {
	for _, m := range globexMarks {
		if strings.Contains(s, m) {
			return true
		}
	}
	return false
}

// watchedConn is a pgx connection through the proxy that records every
// notice it receives.
type watchedConn struct {
	*pgx.Conn
	mu      sync.Mutex
	notices []string
}

func (p *testProxy) connectWatched(t *testing.T, user, password string, mode pgx.QueryExecMode) *watchedConn {
	t.Helper()
	cfg, err := pgx.ParseConfig(p.dsn(user, password))
	if err != nil {
		t.Fatal(err)
	}
	cfg.DefaultQueryExecMode = mode
	w := &watchedConn{}
	cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
		w.mu.Lock()
		defer w.mu.Unlock()
		w.notices = append(w.notices, n.Message+" "+n.Detail+" "+n.Hint)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if w.Conn, err = pgx.ConnectConfig(ctx, cfg); err != nil {
		t.Fatalf("connect as %s: %v", user, err)
	}
	t.Cleanup(func() { w.Close(context.Background()) })
	return w
}

// checkNotices fails the test if a notice mentions globex.
func (w *watchedConn) checkNotices(t *testing.T) {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, n := range w.notices {
		if leaksGlobex(n) {
			t.Errorf("notice leaks globex: %s", n)
		}
	}
}

// wantBlocked runs sql and checks the refusal and that the session is
// intact afterwards.
func wantBlocked(t *testing.T, w *watchedConn, sql string) {
	t.Helper()
	ctx := context.Background()
	rows, err := w.Query(ctx, sql)
	if err == nil {
		// Statements before the refused one in a simple Query run, as they
		// would before a failing statement: their rows are acme's.
		for rows.Next() {
			if vals, _ := rows.Values(); leaksGlobex(fmt.Sprint(vals...)) {
				t.Errorf("%s: row leaks globex: %v", sql, vals)
			}
		}
		rows.Close()
		err = rows.Err()
	}
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "42501" {
		t.Errorf("%s: got %v, want SQLSTATE 42501", sql, err)
		return
	}
	if leaksGlobex(pe.Message + pe.Detail + pe.Hint + pe.Where) {
		t.Errorf("%s: error text leaks globex: %+v", sql, pe)
	}
	var tenant string
	if err := w.QueryRow(ctx, "select current_setting('app.current_tenant_id')").Scan(&tenant); err != nil || tenant != "acme" {
		t.Fatalf("after %s: tenant %q, %v; want acme on a usable connection", sql, tenant, err)
	}
}

// dbState is what the escape attempts must not change, read as the
// superuser (which bypasses RLS).
func dbState(t *testing.T, c *pgtest.Cluster) []string {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, c.DSN("postgres", "", "app"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var state []string
	for _, q := range []string{
		"select tenant_id || ':' || count(*) || ':' || sum(amount) from orders group by tenant_id order by 1",
		"select tenant_id || ':' || string_agg(name, ',' order by id) from customers group by tenant_id order by 1",
		"select tenant_id || ':' || count(*) from audit_raw group by tenant_id order by 1",
		"select string_agg(id || name || price, ',' order by id) from plans",
		"select relrowsecurity::text || relforcerowsecurity::text from pg_class where relname in ('orders', 'customers') order by relname",
		"select count(*)::text from pg_policy",
		"select count(*)::text from pg_trigger where not tgisinternal",
		"select coalesce(string_agg(setconfig::text, ','), '') from pg_db_role_setting",
		"select count(*)::text from pg_largeobject_metadata",
	} {
		rows, err := conn.Query(ctx, q)
		if err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		got, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		state = append(state, strings.Join(got, ";"))
	}
	return state
}

func TestPolicyEscapesEndToEnd(t *testing.T) {
	p := startProxy(t, nil)
	before := dbState(t, p.cluster)
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeExec} {
		t.Run(mode.String(), func(t *testing.T) {
			w := p.connectWatched(t, "acme_app", "acme_secret", mode)
			for _, sql := range escapeAttempts {
				wantBlocked(t, w, sql)
			}
			ro := p.connectWatched(t, "acme_ro", "ro_secret", mode)
			for _, sql := range readOnlyAttempts {
				wantBlocked(t, ro, sql)
			}
			w.checkNotices(t)
			ro.checkNotices(t)
		})
	}
	if after := dbState(t, p.cluster); !slices.Equal(before, after) {
		t.Fatalf("the database changed:\nbefore %q\nafter  %q", before, after)
	}
}

// ormStatements are what applications send; they run inside a transaction
// that is rolled back, and their rows must be acme's only.
var ormStatements = []struct {
	sql  string
	args []any
}{
	{"select id, amount, rank() over (partition by customer_id order by amount desc) from orders", nil},
	{"select c.name, count(*), sum(o.amount) from customers c left join orders o on o.customer_id = c.id group by c.name having count(*) >= 1", nil},
	{"select row_to_json(o)::text from orders o", nil},
	{"select json_build_object('id', id, 'amount', amount) ->> 'amount', '{\"a\":{\"b\":2}}'::jsonb #>> '{a,b}' from orders", nil},
	{"with recursive t(n) as (select 1 union all select n + 1 from t where n < 5) select * from t", nil},
	{"select * from customers c, lateral (select * from orders o where o.customer_id = c.id order by amount desc limit 1) top", nil},
	{"select o.id, p.name from orders o join plans p on p.id = o.id", nil},
	{"select * from orders where customer_id = any($1) and amount > $2", []any{[]int64{1, 2, 3, 4, 5}, 0}},
	{"select t.oid, t.typname from pg_type t join pg_namespace n on n.oid = t.typnamespace where n.nspname = any(current_schemas(false))", nil},
	{"select column_name, data_type from information_schema.columns where table_name = 'orders' order by ordinal_position", nil},
	{"select a.attname from pg_index i join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any(i.indkey) where i.indrelid = 'orders'::regclass and i.indisprimary", nil},
	{"select version(), current_schema(), current_database(), 'int4'::regtype::text", nil},
	{"set constraints all deferred", nil},
	{"savepoint sp1", nil},
	{"insert into customers (tenant_id, name) values ('acme', 'Bugs') on conflict (id) do update set name = excluded.name returning *", nil},
	{"insert into orders (tenant_id, customer_id, amount, status) select 'acme', c.id, p.price, p.name from customers c cross join plans p returning id, tenant_id", nil},
	{"rollback to sp1", nil},
	{"update orders o set amount = p.price from plans p where p.id = o.id returning o.*", nil},
	{"delete from orders using customers where orders.customer_id = customers.id and customers.name = 'nobody' returning orders.id", nil},
	{"merge into orders o using (select 1 as id, 5 as amount) s on o.id = s.id when matched then update set amount = s.amount when not matched then insert (tenant_id, amount) values ('acme', s.amount)", nil},
	{"with moved as (delete from orders where status = 'cancelled' returning *) select count(*) from moved", nil},
	{"select * from orders where id = $1 for update", []any{1}},
	{"select nextval('orders_id_seq') > 0", nil},
	{"create temp table load (id int, amount numeric) on commit drop", nil},
	{"insert into load values (1, 2.5)", nil},
	{"insert into orders (tenant_id, amount) select 'acme', amount from load returning tenant_id", nil},
	{"select tenant_id, count(*) from orders group by tenant_id", nil},
	{"release sp1", nil},
}

func TestPolicyAllowsApplicationSQL(t *testing.T) {
	p := startProxy(t, nil)
	before := dbState(t, p.cluster)
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement} {
		t.Run(mode.String(), func(t *testing.T) {
			ctx := context.Background()
			w := p.connectWatched(t, "acme_app", "acme_secret", mode)
			tx, err := w.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback(ctx)
			for _, st := range ormStatements {
				rows, err := tx.Query(ctx, st.sql, st.args...)
				if err != nil {
					t.Fatalf("%s: %v", st.sql, err)
				}
				for rows.Next() {
					vals, err := rows.Values()
					if err != nil {
						t.Fatalf("%s: %v", st.sql, err)
					}
					if s := fmt.Sprint(vals...); leaksGlobex(s) {
						t.Errorf("%s: row leaks globex: %s", st.sql, s)
					}
				}
				rows.Close()
				if err := rows.Err(); err != nil {
					t.Fatalf("%s: %v", st.sql, err)
				}
			}
			if err := tx.Rollback(ctx); err != nil {
				t.Fatal(err)
			}
			w.checkNotices(t)
		})
	}
	if after := dbState(t, p.cluster); !slices.Equal(before, after) {
		t.Fatalf("the rolled-back transactions changed the database:\nbefore %q\nafter  %q", before, after)
	}
}

// partitionsSchema builds, in its own database, a partitioned table whose
// partitions differ in protection, an inheritance child without RLS, and
// a policy that reads a second setting.
const partitionsSchema = `
GRANT USAGE, CREATE ON SCHEMA public TO app_owner;
GRANT USAGE ON SCHEMA public TO pgmoat;
SET ROLE app_owner;
CREATE TABLE events (id int, tenant_id text NOT NULL, at date NOT NULL) PARTITION BY RANGE (at);
CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
ALTER TABLE events ENABLE ROW LEVEL SECURITY;
ALTER TABLE events FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant ON events USING (tenant_id = NULLIF(current_setting('app.current_tenant_id', true), ''));
ALTER TABLE events_2024 ENABLE ROW LEVEL SECURITY;
ALTER TABLE events_2024 FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant ON events_2024 USING (tenant_id = NULLIF(current_setting('app.current_tenant_id', true), ''));
CREATE TABLE notes (id int, tenant_id text NOT NULL);
CREATE TABLE notes_old () INHERITS (notes);
ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
ALTER TABLE notes FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant ON notes USING (tenant_id = NULLIF(current_setting('app.current_tenant_id', true), ''));
CREATE TABLE flagged (id int, tenant_id text NOT NULL);
ALTER TABLE flagged ENABLE ROW LEVEL SECURITY;
ALTER TABLE flagged FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant ON flagged USING (tenant_id = NULLIF(current_setting('app.current_tenant_id', true), '')
    OR current_setting('App.Bypass', true) = 'on');
CREATE FUNCTION event_count() RETURNS bigint STABLE LANGUAGE sql AS 'SELECT count(*) FROM events';
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO pgmoat;
RESET ROLE;
INSERT INTO events VALUES (1, 'acme', '2024-05-01'), (2, 'globex', '2024-05-01'), (3, 'acme', '2025-05-01'), (4, 'globex', '2025-05-01');
INSERT INTO notes VALUES (1, 'acme'), (2, 'globex');
INSERT INTO notes_old VALUES (3, 'acme'), (4, 'globex');
INSERT INTO flagged VALUES (1, 'acme'), (2, 'globex');
`

func TestPartitionsAndInheritance(t *testing.T) {
	c := pgtest.Shared(t)
	ctx := context.Background()
	for _, sql := range []string{"DROP DATABASE IF EXISTS parts WITH (FORCE)", "CREATE DATABASE parts"} {
		if err := c.Exec(ctx, "postgres", sql); err != nil {
			t.Fatal(err)
		}
	}
	// Registered before startProxy: runs after the proxy has stopped.
	t.Cleanup(func() {
		if err := c.Exec(context.Background(), "postgres", "DROP DATABASE parts WITH (FORCE)"); err != nil {
			t.Error(err)
		}
	})
	if err := c.Exec(ctx, "parts", partitionsSchema); err != nil {
		t.Fatal(err)
	}
	dsn := c.DSN("pgmoat", "pgmoat_secret", "parts")

	t.Run("catalog", func(t *testing.T) {
		conn, err := pgconn.Connect(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		cat, err := LoadCatalog(ctx, conn, "app.current_tenant_id")
		if err != nil {
			t.Fatal(err)
		}
		for _, tt := range []struct {
			key         string
			parents     []string
			isPartition bool
		}{
			{"public.events", nil, false},
			{"public.events_2024", []string{"public.events"}, true},
			{"public.events_2025", []string{"public.events"}, true},
			{"public.notes_old", []string{"public.notes"}, false},
		} {
			r := cat.Relations[tt.key]
			if r == nil || !slices.Equal(r.Parents, tt.parents) || r.IsPartition != tt.isPartition {
				t.Errorf("%s: %+v, want parents %v, partition %v", tt.key, r, tt.parents, tt.isPartition)
			}
		}
		if !slices.Equal(cat.PolicySettings, []string{"app.bypass"}) {
			t.Errorf("PolicySettings = %q, want [app.bypass]", cat.PolicySettings)
		}
		if f := cat.Functions["public.event_count"]; f == nil || f.Volatile {
			t.Errorf("public.event_count: %+v, want a stable function", f)
		}
		if f := cat.Functions["pg_catalog.nextval"]; f == nil || !f.Volatile {
			t.Errorf("pg_catalog.nextval: %+v, want volatile", f)
		}
	})

	// Without pgmoat the unprotected partition and child hand pgmoat's role
	// every tenant's rows: that is what the proxy must refuse.
	t.Run("direct access leaks", func(t *testing.T) {
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		for _, sql := range []string{"select tenant_id from events_2025", "select tenant_id from notes_old"} {
			if got := tenantsOf(t, conn, sql); !slices.Contains(got, "globex") {
				t.Fatalf("%s as pgmoat's role: %v, expected to see globex (the test schema is wrong)", sql, got)
			}
		}
	})

	p := startProxy(t, func(cfg *config.Config) { cfg.Upstream.DSN = dsn })
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement} {
		t.Run(mode.String(), func(t *testing.T) {
			w := p.connectWatched(t, "acme_app", "acme_secret", mode)
			// The parent's policies cover every partition and child.
			wantOnly(t, tenantsOf(t, w.Conn, "select tenant_id from events"), "acme")
			wantOnly(t, tenantsOf(t, w.Conn, "select tenant_id from notes"), "acme")
			wantOnly(t, tenantsOf(t, w.Conn, "select tenant_id from events_2024"), "acme")
			wantOnly(t, tenantsOf(t, w.Conn, "select tenant_id from flagged"), "acme")
			if got := tenantsOf(t, w.Conn, "select tenant_id from only notes"); !slices.Equal(got, []string{"acme"}) {
				t.Errorf("only notes: %v", got)
			}
			var n int64
			if err := w.QueryRow(context.Background(), "select count(*) from only events").Scan(&n); err != nil || n != 0 {
				t.Errorf("only events: %d %v", n, err)
			}
			for _, sql := range []string{
				"select tenant_id from events_2025",
				"select tenant_id from only events_2025",
				"select * from events e join events_2025 f using (id)",
				"select tenant_id from notes_old",
				"set app.bypass = 'on'",
				"set local \"APP.BYPASS\" = 'on'",
				"create temp table events (id int)",
			} {
				wantBlocked(t, w, sql)
			}
			w.checkNotices(t)
		})
	}
}
