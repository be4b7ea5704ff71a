package proxy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgmoat/pgmoat/config"
	"github.com/pgmoat/pgmoat/internal/pgtest"
	"github.com/pgmoat/pgmoat/policy"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// testProxy is a pgmoat server in front of the shared test cluster.
type testProxy struct {
	addr    string
	reg     *prometheus.Registry
	metrics *Metrics
	cluster *pgtest.Cluster
	srv     *Server
	audit   *lockedBuffer // the audit log's JSON lines
}

var testUsers = []config.User{
	{Name: "acme_app", Password: "acme_secret", Tenant: "acme"},
	{Name: "globex_app", Password: "globex_secret", Tenant: "globex"},
	{Name: "acme_ro", Password: "ro_secret", Tenant: "acme", ReadOnly: true},
	{Name: "dba", Password: "dba_secret", Admin: true},
}

func startProxy(t *testing.T, edit func(*config.Config)) *testProxy {
	t.Helper()
	c := pgtest.Shared(t)
	cfg := config.Default()
	cfg.Upstream.DSN = c.DSN("pgmoat", "pgmoat_secret", "app")
	cfg.Users = testUsers
	cfg.Policy.Shared = []config.SharedTable{{Name: "public.plans"}}
	cfg.Limits.ShutdownTimeout = 2 * time.Second
	if edit != nil {
		edit(cfg)
	}
	ctx, cancel := context.WithCancel(context.Background())
	connector, err := NewPgConnector(cfg.Upstream.DSN, "", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	engine, err := LoadEngine(ctx, connector, cfg)
	if err != nil {
		t.Fatal(err)
	}
	auth, err := NewPasswordAuth(cfg.Users)
	if err != nil {
		t.Fatal(err)
	}
	tlsConfig, err := LoadTLS(cfg.TLS)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg, 100)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	audit := &lockedBuffer{}
	srv := NewServer(Options{
		Config: cfg, Logger: log, Audit: NewAuditLog(audit, cfg.Log), Metrics: m, Auth: auth, Connector: connector,
		Engine: func() *policy.Engine { return engine }, Database: "app", TLS: tlsConfig,
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { srv.Serve(ctx, ln); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return &testProxy{addr: ln.Addr().String(), reg: reg, metrics: m, cluster: c, srv: srv, audit: audit}
}

func (p *testProxy) dsn(user, password string) string {
	host, port, _ := net.SplitHostPort(p.addr)
	return "host=" + host + " port=" + port + " user=" + user + " password=" + password + " dbname=app sslmode=disable"
}

func (p *testProxy) connect(t *testing.T, user, password string, mode pgx.QueryExecMode) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(p.dsn(user, password))
	if err != nil {
		t.Fatal(err)
	}
	cfg.DefaultQueryExecMode = mode
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("connect as %s: %v", user, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

var modes = []pgx.QueryExecMode{
	pgx.QueryExecModeSimpleProtocol,
	pgx.QueryExecModeCacheStatement,
	pgx.QueryExecModeCacheDescribe,
	pgx.QueryExecModeDescribeExec,
	pgx.QueryExecModeExec,
}

func sqlstate(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

func tenantsOf(t *testing.T, conn *pgx.Conn, sql string, args ...any) []string {
	t.Helper()
	rows, err := conn.Query(context.Background(), sql, args...)
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	got, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return got
}

func wantOnly(t *testing.T, got []string, tenant string) {
	t.Helper()
	if len(got) == 0 {
		t.Fatalf("no rows: want rows of %s", tenant)
	}
	for _, g := range got {
		if g != tenant {
			t.Fatalf("saw tenant %q, want only %q (all: %v)", g, tenant, got)
		}
	}
}

// relays are the relay modes; on Linux, sessions run on event loops by
// default.
var relays = []string{config.RelayLoop, config.RelayGoroutines}

// startRelayProxy is startProxy with the given relay mode.
func startRelayProxy(t *testing.T, relay string) *testProxy {
	return startProxy(t, func(c *config.Config) { c.Relay = relay })
}

func TestIsolationEveryMode(t *testing.T) {
	for _, relay := range relays {
		t.Run(relay, func(t *testing.T) { testIsolationEveryMode(t, startRelayProxy(t, relay)) })
	}
}

func testIsolationEveryMode(t *testing.T, p *testProxy) {
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			for _, u := range []struct{ user, pass, tenant string }{{"acme_app", "acme_secret", "acme"}, {"globex_app", "globex_secret", "globex"}} {
				conn := p.connect(t, u.user, u.pass, mode)
				wantOnly(t, tenantsOf(t, conn, "select tenant_id from orders"), u.tenant)
				wantOnly(t, tenantsOf(t, conn, "select c.tenant_id from customers c join orders o on o.customer_id = c.id where o.amount > $1", 0), u.tenant)
				wantOnly(t, tenantsOf(t, conn, "select current_setting('app.current_tenant_id')"), u.tenant)
				other := map[string]string{"acme": "globex", "globex": "acme"}[u.tenant]
				_, err := conn.Exec(context.Background(), "insert into orders (tenant_id, amount) values ($1, 1)", other)
				if sqlstate(err) != "42501" {
					t.Fatalf("insert for the other tenant: %v, want 42501", err)
				}
			}
		})
	}
}

func TestBatchPipeline(t *testing.T) {
	p := startProxy(t, nil)
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			conn := p.connect(t, "globex_app", "globex_secret", mode)
			b := &pgx.Batch{}
			for i := 0; i < 5; i++ {
				b.Queue("select current_setting('app.current_tenant_id') || $1::text", "")
				b.Queue("select count(*) from orders where tenant_id <> 'globex'")
			}
			res := conn.SendBatch(context.Background(), b)
			for i := 0; i < 5; i++ {
				var s string
				if err := res.QueryRow().Scan(&s); err != nil || s != "globex" {
					t.Fatalf("tenant in batch: %q %v", s, err)
				}
				var n int
				if err := res.QueryRow().Scan(&n); err != nil || n != 0 {
					t.Fatalf("other tenants' rows in batch: %d %v", n, err)
				}
			}
			if err := res.Close(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// currentTenant is what a statement sees as the tenant setting.
const currentTenant = "select coalesce(current_setting('app.current_tenant_id', true), '<null>')"

func TestTransactionsKeepTenant(t *testing.T) {
	p := startProxy(t, nil)
	ctx := context.Background()
	for _, mode := range modes {
		t.Run(mode.String(), func(t *testing.T) {
			conn := p.connect(t, "acme_app", "acme_secret", mode)
			check := func(step string) {
				t.Helper()
				var s string
				if err := conn.QueryRow(ctx, currentTenant).Scan(&s); err != nil || s != "acme" {
					t.Fatalf("%s: tenant %q, err %v", step, s, err)
				}
			}
			exec := func(sql string) {
				t.Helper()
				if _, err := conn.Exec(ctx, sql); err != nil {
					t.Fatalf("%s: %v", sql, err)
				}
			}
			exec("begin")
			check("in transaction")
			exec("savepoint a")
			check("in savepoint")
			exec("rollback to a")
			check("after rollback to")
			exec("release a")
			exec("commit")
			exec("begin isolation level serializable")
			check("serializable")
			exec("commit")
			exec("start transaction read only")
			_, err := conn.Exec(ctx, "select 1/0")
			if sqlstate(err) != "22012" {
				t.Fatalf("division by zero: %v", err)
			}
			exec("rollback")
			check("after failed transaction")
			tx, err := conn.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			var s string
			if err := tx.QueryRow(ctx, currentTenant).Scan(&s); err != nil || s != "acme" {
				t.Fatalf("pgx tx: %q %v", s, err)
			}
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestMultiStatementStrings sends transaction ends in the middle of one
// simple-protocol string and checks that every statement sees the tenant.
func TestMultiStatementStrings(t *testing.T) {
	p := startProxy(t, nil)
	conn := p.connect(t, "acme_app", "acme_secret", pgx.QueryExecModeSimpleProtocol)
	for _, sql := range []string{
		currentTenant + "; commit; " + currentTenant,
		"begin; " + currentTenant + "; commit; " + currentTenant,
		"begin; " + currentTenant + "; commit and chain; " + currentTenant + "; commit",
		"begin; " + currentTenant + "; rollback and chain; " + currentTenant + "; rollback",
		"begin isolation level repeatable read; " + currentTenant + "; end; " + currentTenant,
		"savepoint x; " + currentTenant,
	} {
		t.Run(sql, func(t *testing.T) {
			results, err := conn.PgConn().Exec(context.Background(), sql).ReadAll()
			if err != nil && !strings.HasPrefix(sql, "savepoint") {
				t.Fatal(err)
			}
			n := 0
			for _, r := range results {
				for _, row := range r.Rows {
					n++
					if string(row[0]) != "acme" {
						t.Fatalf("statement saw tenant %q", row[0])
					}
				}
			}
			if n == 0 && !strings.HasPrefix(sql, "savepoint") {
				t.Fatal("no rows")
			}
		})
	}
	// A chain left open at the end of a string: the next string must set
	// the tenant again (the chained transaction starts without it).
	if _, err := conn.Exec(context.Background(), "begin; select 1; commit and chain"); err != nil {
		t.Fatal(err)
	}
	wantOnly(t, tenantsOf(t, conn, currentTenant), "acme")
	if _, err := conn.Exec(context.Background(), "commit"); err != nil {
		t.Fatal(err)
	}
}

func TestPipelineWithCommitInTheMiddle(t *testing.T) {
	p := startProxy(t, nil)
	conn := p.connect(t, "acme_app", "acme_secret", pgx.QueryExecModeCacheStatement)
	pc := conn.PgConn()
	ctx := context.Background()
	pl := pc.StartPipeline(ctx)
	pl.SendQueryParams("begin", nil, nil, nil, nil)
	pl.SendQueryParams(currentTenant, nil, nil, nil, nil)
	pl.SendQueryParams("commit", nil, nil, nil, nil)
	pl.SendQueryParams(currentTenant, nil, nil, nil, nil)
	pl.SendPipelineSync()
	pl.SendQueryParams(currentTenant, nil, nil, nil, nil)
	pl.SendPipelineSync()
	if err := pl.Flush(); err != nil {
		t.Fatal(err)
	}
	var seen []string
	for {
		res, err := pl.GetResults()
		if err != nil {
			t.Fatal(err)
		}
		if res == nil {
			break
		}
		switch r := res.(type) {
		case *pgconn.ResultReader:
			rr := r.Read()
			if rr.Err != nil {
				t.Fatal(rr.Err)
			}
			for _, row := range rr.Rows {
				seen = append(seen, string(row[0]))
			}
		}
	}
	if err := pl.Close(); err != nil {
		t.Fatal(err)
	}
	if len(seen) != 3 {
		t.Fatalf("saw %v", seen)
	}
	for _, s := range seen {
		if s != "acme" {
			t.Fatalf("pipeline statement saw tenant %q (all %v)", s, seen)
		}
	}
}

func TestClientCannotChangeTenant(t *testing.T) {
	p := startProxy(t, nil)
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement} {
		t.Run(mode.String(), func(t *testing.T) {
			conn := p.connect(t, "acme_app", "acme_secret", mode)
			for _, sql := range []string{
				"set app.current_tenant_id = 'globex'",
				"set session app.current_tenant_id = 'globex'",
				"set local app.current_tenant_id = 'globex'",
				"SET \"app.current_tenant_id\" TO 'globex'",
				"reset app.current_tenant_id",
				"reset all",
				"set app.current_tenant_id to default",
				"select set_config('app.current_tenant_id', 'globex', false)",
				"select * from orders where set_config('app.current_tenant_id', 'globex', true) is not null",
				"select pg_catalog.set_config('app.current_tenant_id', 'globex', true)",
				"do $$ begin perform set_config('app.current_tenant_id', 'globex', false); end $$",
				"select query_to_xml('select * from audit_raw', true, true, '')",
				"select ts_stat('select body from audit_raw')",
				"create function f() returns int language sql as 'select 1'",
				"create procedure p() language sql as 'select 1'",
				"set role postgres",
				"set session authorization postgres",
				"set row_security = off",
			} {
				_, err := conn.Exec(context.Background(), sql)
				if sqlstate(err) != "42501" {
					t.Errorf("%s: got %v, want SQLSTATE 42501", sql, err)
				}
				wantOnly(t, tenantsOf(t, conn, "select tenant_id from orders"), "acme")
			}
		})
	}
}

func TestStartupOptionsRefused(t *testing.T) {
	p := startProxy(t, nil)
	for _, extra := range []string{
		" options='-c app.current_tenant_id=globex'",
		" app.current_tenant_id=globex",
		" search_path=evil",
	} {
		cfg, err := pgx.ParseConfig(p.dsn("acme_app", "acme_secret") + extra)
		if err != nil {
			t.Fatal(err)
		}
		_, err = pgx.ConnectConfig(context.Background(), cfg)
		if sqlstate(err) != "42501" {
			t.Errorf("%s: %v, want 42501", extra, err)
		}
	}
}

func TestOnlyProtectedRelations(t *testing.T) {
	p := startProxy(t, nil)
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement} {
		t.Run(mode.String(), func(t *testing.T) {
			conn := p.connect(t, "acme_app", "acme_secret", mode)
			ctx := context.Background()
			for _, sql := range []string{
				"select * from audit_raw",
				"select * from orders o join audit_raw a on a.tenant_id = o.tenant_id",
				"select * from orders where id in (select id from audit_raw)",
				"with x as (select * from audit_raw) select * from x",
				"with x as (insert into audit_raw (tenant_id, event) values ('acme', 'x') returning *) select * from x",
				"insert into orders (tenant_id, amount) select tenant_id, 1 from audit_raw",
				"update orders set amount = 1 from audit_raw where audit_raw.id = orders.id",
				"delete from orders using audit_raw where audit_raw.id = orders.id",
				"copy audit_raw to stdout",
				"copy (select * from audit_raw) to stdout",
				"explain select * from audit_raw",
				"prepare p as select * from audit_raw",
				"declare c cursor for select * from audit_raw",
				"select * from pg_stat_activity",
				"select * from pg_locks",
				"select * from pg_largeobject",
				"truncate orders",
				"create table t (id int)",
				"insert into plans values (99, 'x', 1)",
			} {
				_, err := conn.Exec(ctx, sql)
				if sqlstate(err) != "42501" {
					t.Errorf("%s: got %v, want SQLSTATE 42501", sql, err)
				}
			}
			var n int
			if err := conn.QueryRow(ctx, "select count(*) from plans").Scan(&n); err != nil || n == 0 {
				t.Fatalf("shared table: %d %v", n, err)
			}
			_, err := conn.Exec(ctx, "select * from audit_raw")
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || !strings.Contains(pe.Message, "public.audit_raw") {
				t.Fatalf("block message does not name the relation: %v", err)
			}
		})
	}
}

func TestDriverCatalogQueries(t *testing.T) {
	p := startProxy(t, nil)
	conn := p.connect(t, "acme_app", "acme_secret", pgx.QueryExecModeCacheStatement)
	for _, sql := range []string{
		"select t.oid, t.typname from pg_type t join pg_namespace n on n.oid = t.typnamespace where n.nspname = 'public'",
		"select version(), current_schema(), current_database(), current_schemas(false)",
		"select 'int4'::regtype",
		"show search_path",
		"show transaction isolation level",
		"-- ping",
		"set client_min_messages to warning",
		"set time zone 'UTC'",
		"select 1+1 as result",
	} {
		if _, err := conn.Exec(context.Background(), sql); err != nil {
			t.Errorf("%s: %v", sql, err)
		}
	}
}

func TestBlockAbortsTransaction(t *testing.T) {
	p := startProxy(t, nil)
	ctx := context.Background()
	for _, mode := range []pgx.QueryExecMode{pgx.QueryExecModeSimpleProtocol, pgx.QueryExecModeCacheStatement} {
		t.Run(mode.String(), func(t *testing.T) {
			conn := p.connect(t, "acme_app", "acme_secret", mode)
			count := func() int {
				var n int
				if err := conn.QueryRow(ctx, "select count(*) from customers where name = 'ghost'").Scan(&n); err != nil {
					t.Fatal(err)
				}
				return n
			}
			before := count()
			if _, err := conn.Exec(ctx, "begin"); err != nil {
				t.Fatal(err)
			}
			if _, err := conn.Exec(ctx, "insert into customers (tenant_id, name) values ('acme', 'ghost')"); err != nil {
				t.Fatal(err)
			}
			if _, err := conn.Exec(ctx, "select * from audit_raw"); sqlstate(err) != "42501" {
				t.Fatalf("block: %v", err)
			}
			if st := conn.PgConn().TxStatus(); st != 'E' {
				t.Fatalf("transaction status %q after a block, want E", st)
			}
			tag, err := conn.Exec(ctx, "commit")
			if err != nil || tag.String() != "ROLLBACK" {
				t.Fatalf("commit after block: %q %v", tag, err)
			}
			if n := count(); n != before {
				t.Fatalf("the aborted transaction's insert survived: %d rows, want %d", n, before)
			}
		})
	}
}

func TestNothingAfterBlockRuns(t *testing.T) {
	p := startProxy(t, nil)
	ctx := context.Background()
	conn := p.connect(t, "acme_app", "acme_secret", pgx.QueryExecModeSimpleProtocol)
	sql := "insert into customers (tenant_id, name) values ('acme', 'after1'); select * from audit_raw; insert into customers (tenant_id, name) values ('acme', 'after2')"
	_, err := conn.Exec(ctx, sql)
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "42501" {
		t.Fatalf("got %v", err)
	}
	if want := int32(strings.Index(sql, "audit_raw") + 1); pe.Position != want {
		t.Errorf("error position %d, want %d", pe.Position, want)
	}
	var n int
	if err := conn.QueryRow(ctx, "select count(*) from customers where name like 'after%'").Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d rows of the failed string committed (%v)", n, err)
	}

	// The same in an extended-protocol batch.
	b := &pgx.Batch{}
	b.Queue("insert into customers (tenant_id, name) values ('acme', 'after3')")
	b.Queue("select * from audit_raw")
	b.Queue("insert into customers (tenant_id, name) values ('acme', 'after4')")
	if err := conn.SendBatch(ctx, b).Close(); sqlstate(err) != "42501" {
		t.Fatalf("batch: %v", err)
	}
	conn2 := p.connect(t, "acme_app", "acme_secret", pgx.QueryExecModeCacheStatement)
	b = &pgx.Batch{}
	b.Queue("insert into customers (tenant_id, name) values ('acme', 'after3')")
	b.Queue("select * from audit_raw")
	b.Queue("insert into customers (tenant_id, name) values ('acme', 'after4')")
	if err := conn2.SendBatch(ctx, b).Close(); sqlstate(err) != "42501" {
		t.Fatalf("batch: %v", err)
	}
	if err := conn2.QueryRow(ctx, "select count(*) from customers where name like 'after%'").Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d rows of the failed batch committed (%v)", n, err)
	}
}

func TestServerErrorPositionCorrected(t *testing.T) {
	p := startProxy(t, nil)
	conn := p.connect(t, "acme_app", "acme_secret", pgx.QueryExecModeSimpleProtocol)
	sql := "select nosuchcolumn from orders"
	_, err := conn.Exec(context.Background(), sql)
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "42703" {
		t.Fatalf("got %v", err)
	}
	if pe.Position != 8 {
		t.Fatalf("position %d, want 8", pe.Position)
	}
}

func TestAuthentication(t *testing.T) {
	p := startProxy(t, nil)
	var msgs []string
	for _, c := range []struct{ user, pass string }{{"acme_app", "wrong"}, {"nobody", "acme_secret"}} {
		_, err := pgx.Connect(context.Background(), p.dsn(c.user, c.pass))
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != "28P01" {
			t.Fatalf("%s: %v, want 28P01", c.user, err)
		}
		msgs = append(msgs, strings.ReplaceAll(pe.Message, c.user, "X"))
	}
	if msgs[0] != msgs[1] {
		t.Fatalf("unknown user and wrong password differ: %q vs %q", msgs[0], msgs[1])
	}
	if got := testutil.ToFloat64(p.metrics.authFailures.WithLabelValues(AuthReasonBadPassword)); got != 1 {
		t.Errorf("auth failures (bad password) = %v", got)
	}
	_, err := pgx.Connect(context.Background(), strings.Replace(p.dsn("acme_app", "acme_secret"), "dbname=app", "dbname=other", 1))
	if sqlstate(err) != "3D000" {
		t.Fatalf("other database: %v", err)
	}
}

func TestAdminBypassesPolicy(t *testing.T) {
	p := startProxy(t, nil)
	conn := p.connect(t, "dba", "dba_secret", pgx.QueryExecModeCacheStatement)
	var n int
	if err := conn.QueryRow(context.Background(), "select count(*) from audit_raw").Scan(&n); err != nil || n == 0 {
		t.Fatalf("admin read of audit_raw: %d %v", n, err)
	}
}

func TestMetricsCountBlocks(t *testing.T) {
	p := startProxy(t, nil)
	conn := p.connect(t, "acme_app", "acme_secret", pgx.QueryExecModeSimpleProtocol)
	if _, err := conn.Exec(context.Background(), "select * from orders"); err != nil {
		t.Fatal(err)
	}
	for _, sql := range []string{"select * from audit_raw", "set app.current_tenant_id = 'globex'"} {
		if _, err := conn.Exec(context.Background(), sql); sqlstate(err) != "42501" {
			t.Fatalf("%s: %v, want 42501", sql, err)
		}
	}
	if got := testutil.ToFloat64(p.metrics.statements.WithLabelValues(DecisionBlocked)); got != 2 {
		t.Errorf("blocked statements = %v, want 2", got)
	}
	if n := testutil.CollectAndCount(p.metrics.blocked, "pgmoat_blocked_statements_total"); n != 2 {
		t.Errorf("%d blocked series, want 2", n)
	}
	if got := testutil.ToFloat64(p.metrics.injections); got < 1 {
		t.Errorf("injections = %v", got)
	}

	// In an extended-protocol batch, what follows a block up to Sync never
	// runs: it is not counted.
	ext := p.connect(t, "acme_app", "acme_secret", pgx.QueryExecModeCacheStatement)
	b := &pgx.Batch{}
	b.Queue("select * from audit_raw")
	b.Queue("select * from audit_raw where id = 1")
	b.Queue("set app.current_tenant_id = 'globex'")
	if err := ext.SendBatch(context.Background(), b).Close(); sqlstate(err) != "42501" {
		t.Fatalf("batch: %v, want 42501", err)
	}
	if got := testutil.ToFloat64(p.metrics.statements.WithLabelValues(DecisionBlocked)); got != 3 {
		t.Errorf("blocked statements after the batch = %v, want 3", got)
	}
}

// TestMalformedMessages sends broken protocol and checks that the connection
// gets 08P01 and is closed while other sessions carry on.
func TestMalformedMessages(t *testing.T) {
	p := startProxy(t, nil)
	other := p.connect(t, "globex_app", "globex_secret", pgx.QueryExecModeCacheStatement)
	cases := map[string][]byte{
		"bad startup length": {0, 0, 0, 2},
		"oversized startup":  {0, 1, 0, 0, 0, 3, 0, 0},
		"bad protocol":       {0, 0, 0, 8, 0, 9, 0, 0},
		"no user":            {0, 0, 0, 9, 0, 3, 0, 0, 0},
	}
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			code := rawExchange(t, p.addr, b)
			if code != "08P01" && code != "28000" {
				t.Fatalf("got SQLSTATE %q", code)
			}
		})
	}
	wantOnly(t, tenantsOf(t, other, "select tenant_id from orders"), "globex")
}

// TestMalformedAfterAuth sends a garbage message on an authenticated session.
func TestMalformedAfterAuth(t *testing.T) {
	p := startProxy(t, nil)
	conn := p.connect(t, "acme_app", "acme_secret", pgx.QueryExecModeSimpleProtocol)
	nc := conn.PgConn().Conn()
	// A Bind message whose body is not NUL-terminated.
	nc.Write([]byte{'B', 0, 0, 0, 6, 'x', 'y'})
	nc.Write([]byte{'S', 0, 0, 0, 4})
	nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf, _ := io.ReadAll(nc)
	if !strings.Contains(string(buf), "08P01") {
		t.Fatalf("no 08P01 in %q", buf)
	}
	other := p.connect(t, "acme_app", "acme_secret", pgx.QueryExecModeSimpleProtocol)
	wantOnly(t, tenantsOf(t, other, "select tenant_id from orders"), "acme")
}

// rawExchange writes b as the first bytes of a connection and returns the
// SQLSTATE of the error the server sends before closing.
func rawExchange(t *testing.T, addr string, b []byte) string {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(5 * time.Second))
	nc.Write(b)
	buf, _ := io.ReadAll(nc)
	i := strings.Index(string(buf), "\x00C")
	if len(buf) == 0 || buf[0] != 'E' || i < 0 || len(buf) < i+7 {
		t.Fatalf("no ErrorResponse: %q", buf)
	}
	return string(buf[i+2 : i+7])
}

func TestConcurrentTenants(t *testing.T) {
	p := startProxy(t, nil)
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		user, pass, tenant := "acme_app", "acme_secret", "acme"
		if i%2 == 1 {
			user, pass, tenant = "globex_app", "globex_secret", "globex"
		}
		conn := p.connect(t, user, pass, modes[i%len(modes)])
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 50; j++ {
				rows, err := conn.Query(context.Background(), "select tenant_id from orders")
				if err != nil {
					t.Error(err)
					return
				}
				got, err := pgx.CollectRows(rows, pgx.RowTo[string])
				if err != nil {
					t.Error(err)
					return
				}
				for _, g := range got {
					if g != tenant {
						t.Errorf("%s saw %s", tenant, g)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
}

// TestCancel cancels a running query with pgx's context cancellation (a
// CancelRequest carrying pgmoat's key) and checks that a forged key
// cancels nothing.
func TestCancel(t *testing.T) {
	p := startProxy(t, nil)
	cfg, err := pgx.ParseConfig(p.dsn("acme_app", "acme_secret"))
	if err != nil {
		t.Fatal(err)
	}
	// Cancel with a CancelRequest (pgx's default closes the connection).
	cfg.BuildContextWatcherHandler = func(pc *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.CancelRequestContextWatcherHandler{Conn: pc, DeadlineDelay: 10 * time.Second}
	}
	conn, err := pgx.ConnectConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err = conn.Exec(ctx, "select pg_sleep(30)")
	if sqlstate(err) != "57014" {
		t.Fatalf("cancelled query: %v, want 57014 (query_canceled)", err)
	}
	wantOnly(t, tenantsOf(t, conn, "select tenant_id from orders"), "acme")

	// Another client's key, off by one, must not cancel it.
	victim := p.connect(t, "globex_app", "globex_secret", pgx.QueryExecModeCacheStatement)
	pid, key := victim.PgConn().PID(), victim.PgConn().SecretKey()
	done := make(chan error, 1)
	go func() {
		_, err := victim.Exec(context.Background(), "select pg_sleep(3)")
		done <- err
	}()
	waitForQuery(t, p.cluster, "select pg_sleep(3)") // a cancel before it started would prove nothing
	for _, forged := range []struct {
		pid uint32
		key []byte
	}{{pid, append([]byte{}, key[:3]...)}, {pid + 1, key}, {pid, []byte{key[0] ^ 1, key[1], key[2], key[3]}}} {
		sendCancel(t, p.addr, forged.pid, forged.key)
	}
	if err := <-done; err != nil {
		t.Fatalf("a forged cancel key cancelled another client's query: %v", err)
	}
}

func sendCancel(t *testing.T, addr string, pid uint32, key []byte) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf, _ := (&pgproto3.CancelRequest{ProcessID: pid, SecretKey: key}).Encode(nil)
	if _, err := c.Write(buf); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	io.Copy(io.Discard, c) // pgmoat closes the connection when done
}

func TestConnectionLimits(t *testing.T) {
	p := startProxy(t, func(c *config.Config) {
		c.Limits.MaxClientConnections = 3
		c.Limits.MaxTenantConnections = 2
	})
	p.connect(t, "acme_app", "acme_secret", pgx.QueryExecModeCacheStatement)
	p.connect(t, "acme_ro", "ro_secret", pgx.QueryExecModeCacheStatement) // same tenant, another user
	_, err := pgx.Connect(context.Background(), p.dsn("acme_app", "acme_secret"))
	if sqlstate(err) != "53300" {
		t.Fatalf("third acme connection: %v, want 53300", err)
	}
	// The refused session frees its place just after the client hears of it.
	var globex *pgx.Conn
	waitFor(t, func() bool {
		globex, err = pgx.Connect(context.Background(), p.dsn("globex_app", "globex_secret"))
		return err == nil
	})
	t.Cleanup(func() { globex.Close(context.Background()) })
	_, err = pgx.Connect(context.Background(), p.dsn("globex_app", "globex_secret"))
	if sqlstate(err) != "53300" {
		t.Fatalf("fourth connection: %v, want 53300", err)
	}
	wantOnly(t, tenantsOf(t, globex, "select tenant_id from orders"), "globex")
	// A closed session frees its place.
	globex.Close(context.Background())
	waitFor(t, func() bool {
		c, err := pgx.Connect(context.Background(), p.dsn("globex_app", "globex_secret"))
		if err == nil {
			c.Close(context.Background())
		}
		return err == nil
	})
}

// waitFor polls cond until it holds, for state that settles asynchronously.
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for i := 0; i < 1500; i++ {
		if cond() {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("condition not reached in 30s")
}

// TestUpstreamParserSettingsForced: a role default of
// standard_conforming_strings = off would let the server split a text
// differently from pgmoat's parser; pgmoat overrides it on every connection.
func TestUpstreamParserSettingsForced(t *testing.T) {
	p := startProxy(t, nil)
	ctx := context.Background()
	if err := p.cluster.Exec(ctx, "app", "ALTER ROLE pgmoat IN DATABASE app SET standard_conforming_strings = off"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.cluster.Exec(ctx, "app", "ALTER ROLE pgmoat IN DATABASE app RESET standard_conforming_strings")
	})
	conn := p.connect(t, "acme_app", "acme_secret", pgx.QueryExecModeSimpleProtocol)
	var scs string
	if err := conn.QueryRow(ctx, "show standard_conforming_strings").Scan(&scs); err != nil || scs != "on" {
		t.Fatalf("standard_conforming_strings = %q (%v), want on", scs, err)
	}
	// One statement for the parser; with the setting off, two for the server.
	rows, err := conn.Query(ctx, `select 'x\' || '; select tenant_id from audit_raw; --'`)
	if err != nil {
		t.Fatal(err)
	}
	got, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || len(got) != 1 || got[0] != `x\; select tenant_id from audit_raw; --` {
		t.Fatalf("got %q, %v", got, err)
	}
}

// TestErrorAtCommit: a deferred constraint fails at the implicit COMMIT of
// an extended-protocol batch, so the error answers the Sync.
func TestErrorAtCommit(t *testing.T) {
	p := startProxy(t, nil)
	ctx := context.Background()
	conn := p.connect(t, "acme_app", "acme_secret", pgx.QueryExecModeCacheStatement)
	if _, err := conn.Exec(ctx, "create temp table dz (id int unique deferrable initially deferred)"); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "insert into dz values (1), (1)"); sqlstate(err) != "23505" {
		t.Fatalf("deferred unique violation: %v, want 23505", err)
	}
	wantOnly(t, tenantsOf(t, conn, "select tenant_id from orders"), "acme")
}

// TestSQLPrepareReplacesStatement: SQL PREPARE shares the statement
// namespace with the protocol's Parse, so a name pgmoat saw parsed as
// BEGIN can come to denote a SELECT; it must still run with the tenant.
func TestSQLPrepareReplacesStatement(t *testing.T) {
	p := startProxy(t, nil)
	ctx := context.Background()
	conn := p.connect(t, "acme_app", "acme_secret", pgx.QueryExecModeSimpleProtocol)
	pc := conn.PgConn()
	if _, err := pc.Prepare(ctx, "s4", "begin", nil); err != nil {
		t.Fatal(err)
	}
	if err := pc.Exec(ctx, "deallocate s4; prepare s4 as "+currentTenant).Close(); err != nil {
		t.Fatal(err)
	}
	res := pc.ExecPrepared(ctx, "s4", nil, nil, nil).Read()
	if res.Err != nil || len(res.Rows) != 1 || string(res.Rows[0][0]) != "acme" {
		t.Fatalf("statement replaced by SQL PREPARE: rows %q, err %v; want acme", res.Rows, res.Err)
	}
	// A Parse that fails because SQL PREPARE already took the name.
	if err := pc.Exec(ctx, "prepare s5 as "+currentTenant).Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := pc.Prepare(ctx, "s5", "begin", nil); sqlstate(err) != "42P05" {
		t.Fatalf("Parse of a taken name: %v, want 42P05", err)
	}
	res = pc.ExecPrepared(ctx, "s5", nil, nil, nil).Read()
	if res.Err != nil || len(res.Rows) != 1 || string(res.Rows[0][0]) != "acme" {
		t.Fatalf("statement taken by SQL PREPARE: rows %q, err %v; want acme", res.Rows, res.Err)
	}
}

// TestExecuteEndsTransaction: SQL EXECUTE can run any statement a Parse
// prepared, COMMIT AND CHAIN included; what follows it in the new
// transaction still runs with the tenant.
func TestExecuteEndsTransaction(t *testing.T) {
	p := startProxy(t, nil)
	ctx := context.Background()
	conn := p.connect(t, "acme_app", "acme_secret", pgx.QueryExecModeSimpleProtocol)
	pc := conn.PgConn()
	if _, err := pc.Prepare(ctx, "chain", "commit and chain", nil); err != nil {
		t.Fatal(err)
	}
	// One statement per Query: in one multi-statement Query PostgreSQL 15
	// itself fails EXECUTE of a COMMIT with a FATAL error.
	for _, sql := range []string{"begin", currentTenant, "execute chain", currentTenant} {
		res, err := pc.Exec(ctx, sql).ReadAll()
		if err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
		if sql == currentTenant && string(res[0].Rows[0][0]) != "acme" {
			t.Errorf("tenant = %q, want acme", res[0].Rows[0][0])
		}
	}
	if err := pc.Exec(ctx, "commit").Close(); err != nil {
		t.Fatal(err)
	}
}

// TestSetBeforeBeginIsolation: SET needs no tenant, so a batch of SET and
// BEGIN ISOLATION LEVEL works as it does directly (an injected statement
// before BEGIN would take a snapshot and make it fail with 25001).
func TestSetBeforeBeginIsolation(t *testing.T) {
	p := startProxy(t, nil)
	ctx := context.Background()
	conn := p.connect(t, "acme_app", "acme_secret", pgx.QueryExecModeCacheStatement)
	b := &pgx.Batch{}
	b.Queue("set statement_timeout = 5000")
	b.Queue("begin isolation level serializable")
	b.Queue(currentTenant)
	b.Queue("commit")
	br := conn.SendBatch(ctx, b)
	for i := 0; i < 2; i++ {
		if _, err := br.Exec(); err != nil {
			t.Fatalf("statement %d: %v", i, err)
		}
	}
	var s string
	if err := br.QueryRow().Scan(&s); err != nil || s != "acme" {
		t.Fatalf("tenant %q, %v", s, err)
	}
	if err := br.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestNegotiateProtocolVersion: a client asking for protocol 3.1 with a
// _pq_ option gets NegotiateProtocolVersion before authentication, as
// PostgreSQL sends it, and can then log in.
func TestNegotiateProtocolVersion(t *testing.T) {
	p := startProxy(t, nil)
	c, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fe := pgproto3.NewFrontend(c, c)
	fe.Send(&pgproto3.StartupMessage{
		ProtocolVersion: 3<<16 | 1,
		Parameters:      map[string]string{"user": "acme_app", "database": "app", "_pq_.future": "1"},
	})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	msg, err := fe.Receive()
	if err != nil {
		t.Fatal(err)
	}
	npv, ok := msg.(*pgproto3.NegotiateProtocolVersion)
	if !ok || npv.NewestMinorProtocol != 0 || len(npv.UnrecognizedOptions) != 1 || npv.UnrecognizedOptions[0] != "_pq_.future" {
		t.Fatalf("first message %#v, want NegotiateProtocolVersion(0, [_pq_.future])", msg)
	}
	if msg, err = fe.Receive(); err != nil {
		t.Fatal(err)
	}
	if _, ok := msg.(*pgproto3.AuthenticationSASL); !ok {
		t.Fatalf("then %#v, want AuthenticationSASL", msg)
	}
}

// TestDeallocateAllKeepsTenant: pgmoat keeps its set_config statement
// prepared between transactions; DEALLOCATE ALL and DISCARD ALL drop it,
// sent alone or in a pipeline, and the next statement still runs with the
// tenant.
func TestDeallocateAllKeepsTenant(t *testing.T) {
	p := startProxy(t, nil)
	ctx := context.Background()
	conn := p.connect(t, "acme_app", "acme_secret", pgx.QueryExecModeSimpleProtocol)
	pc := conn.PgConn()
	tenant := func(step string) {
		t.Helper()
		res := pc.ExecParams(ctx, currentTenant, nil, nil, nil, nil).Read()
		if res.Err != nil || len(res.Rows) != 1 || string(res.Rows[0][0]) != "acme" {
			t.Fatalf("%s: rows %q, err %v; want acme", step, res.Rows, res.Err)
		}
	}
	tenant("first")
	tenant("with pgmoat's statement prepared")
	for _, drop := range []string{"deallocate all", "discard all"} {
		if err := pc.Exec(ctx, drop).Close(); err != nil {
			t.Fatalf("%s: %v", drop, err)
		}
		tenant("after " + drop)
		tenant("after " + drop + ", prepared again")
		if drop == "discard all" {
			continue // PostgreSQL refuses it in a pipeline (25001)
		}

		// The same in one pipeline, with the extended protocol.
		b := &pgconn.Batch{}
		b.ExecParams(currentTenant, nil, nil, nil, nil)
		b.ExecParams(drop, nil, nil, nil, nil)
		b.ExecParams(currentTenant, nil, nil, nil, nil)
		results, err := pc.ExecBatch(ctx, b).ReadAll()
		if err != nil {
			t.Fatalf("pipeline with %s: %v", drop, err)
		}
		for _, i := range []int{0, 2} {
			if r := results[i]; len(r.Rows) != 1 || string(r.Rows[0][0]) != "acme" {
				t.Fatalf("pipeline with %s, statement %d: rows %q; want acme", drop, i, r.Rows)
			}
		}
		tenant("after a pipeline with " + drop)
	}
}
