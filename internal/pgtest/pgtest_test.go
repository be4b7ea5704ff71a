package pgtest_test

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgmoat/pgmoat/internal/pgtest"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// connectApp connects to the demo database as pgmoat's upstream role.
func connectApp(t *testing.T) *pgx.Conn {
	t.Helper()
	c := pgtest.Shared(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.DSN("pgmoat", "pgmoat_secret", "app"))
	if err != nil {
		t.Fatalf("connect as pgmoat: %v\n%s", err, c.LogTail())
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// countByTenant returns, for table, the number of rows pgmoat's role sees
// per tenant_id, inside a transaction with the tenant set by SET LOCAL
// (tenant nil: the setting is left unset).
func countByTenant(t *testing.T, conn *pgx.Conn, table string, tenant *string) map[string]int {
	t.Helper()
	ctx := context.Background()
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if tenant != nil {
		if _, err := tx.Exec(ctx, "SET LOCAL app.current_tenant_id = '"+*tenant+"'"); err != nil {
			t.Fatal(err)
		}
	}
	rows, err := tx.Query(ctx, "SELECT tenant_id, count(*) FROM "+table+" GROUP BY tenant_id")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for rows.Next() {
		var id string
		var n int
		if err := rows.Scan(&id, &n); err != nil {
			t.Fatal(err)
		}
		got[id] = n
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return got
}

func ptr(s string) *string { return &s }

func TestDemoRowLevelSecurity(t *testing.T) {
	conn := connectApp(t)
	tests := []struct {
		name   string
		table  string
		tenant *string
		want   map[string]int
	}{
		{"orders without tenant", "orders", nil, map[string]int{}},
		{"orders with empty tenant", "orders", ptr(""), map[string]int{}},
		{"orders as acme", "orders", ptr("acme"), map[string]int{"acme": 4}},
		{"orders as globex", "orders", ptr("globex"), map[string]int{"globex": 3}},
		{"customers without tenant", "customers", nil, map[string]int{}},
		{"customers as acme", "customers", ptr("acme"), map[string]int{"acme": 3}},
		{"customers as globex", "customers", ptr("globex"), map[string]int{"globex": 2}},
		// audit_raw has no RLS: Postgres shows pgmoat's role every tenant's
		// rows, whatever the setting. This is why pgmoat must block it.
		{"audit_raw without tenant", "audit_raw", nil, map[string]int{"acme": 2, "globex": 2}},
		{"audit_raw as acme", "audit_raw", ptr("acme"), map[string]int{"acme": 2, "globex": 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := countByTenant(t, conn, tt.table, tt.tenant)
			if len(got) != len(tt.want) {
				t.Fatalf("rows per tenant = %v, want %v", got, tt.want)
			}
			for tenant, n := range tt.want {
				if got[tenant] != n {
					t.Fatalf("rows per tenant = %v, want %v", got, tt.want)
				}
			}
		})
	}
}

func TestDemoWrites(t *testing.T) {
	conn := connectApp(t)
	tests := []struct {
		name     string
		sql      string
		wantCode string // "" means success with wantRows rows affected
		wantRows int64
	}{
		{"insert own tenant", "INSERT INTO orders (tenant_id, customer_id, amount) VALUES ('acme', 1, 10)", "", 1},
		{"insert other tenant", "INSERT INTO orders (tenant_id, customer_id, amount) VALUES ('globex', 4, 10)", "42501", 0},
		{"move row to other tenant", "UPDATE orders SET tenant_id = 'globex' WHERE id = 1", "42501", 0},
		{"insert empty tenant", "INSERT INTO customers (tenant_id, name) VALUES ('', 'nobody')", "42501", 0},
		{"update other tenant's rows", "UPDATE orders SET amount = 0 WHERE tenant_id = 'globex'", "", 0},
		{"delete other tenant's rows", "DELETE FROM customers WHERE tenant_id = 'globex'", "", 0},
		{"read shared plans", "SELECT * FROM plans", "", 3},
		{"write shared plans", "INSERT INTO plans VALUES (9, 'x', 1)", "42501", 0},
		// No RLS on audit_raw: Postgres lets acme forge a globex row.
		{"insert into audit_raw for another tenant", "INSERT INTO audit_raw (tenant_id, event) VALUES ('globex', 'forged')", "", 1},
	}
	ctx := context.Background()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tx, err := conn.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback(ctx) // leave the shared database unchanged
			if _, err := tx.Exec(ctx, "SET LOCAL app.current_tenant_id = 'acme'"); err != nil {
				t.Fatal(err)
			}
			tag, err := tx.Exec(ctx, tt.sql)
			var pgErr *pgconn.PgError
			switch {
			case tt.wantCode == "" && err != nil:
				t.Fatalf("%s: %v", tt.sql, err)
			case tt.wantCode == "" && tag.RowsAffected() != tt.wantRows:
				t.Fatalf("%s: %d rows, want %d", tt.sql, tag.RowsAffected(), tt.wantRows)
			case tt.wantCode != "" && !errors.As(err, &pgErr):
				t.Fatalf("%s: error %v, want SQLSTATE %s", tt.sql, err, tt.wantCode)
			case tt.wantCode != "" && pgErr.Code != tt.wantCode:
				t.Fatalf("%s: SQLSTATE %s (%s), want %s", tt.sql, pgErr.Code, pgErr.Message, tt.wantCode)
			}
		})
	}
}

// TestDemoRole checks that the upstream role cannot escape RLS by itself.
func TestDemoRole(t *testing.T) {
	conn := connectApp(t)
	var super, bypass, owns bool
	err := conn.QueryRow(context.Background(), `
		SELECT rolsuper, rolbypassrls,
		       EXISTS (SELECT 1 FROM pg_class WHERE relowner = r.oid)
		FROM pg_roles r WHERE rolname = current_user`).Scan(&super, &bypass, &owns)
	if err != nil {
		t.Fatal(err)
	}
	if super || bypass || owns {
		t.Fatalf("pgmoat role: superuser=%v bypassrls=%v owns relations=%v, want all false", super, bypass, owns)
	}
}

func TestStartStop(t *testing.T) {
	c, err := pgtest.Start()
	if errors.Is(err, pgtest.ErrNoPostgres) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := c.Exec(ctx, "postgres", "CREATE TABLE t (x int); INSERT INTO t VALUES (1); SELECT * FROM t"); err != nil {
		t.Fatalf("multi-statement exec: %v", err)
	}
	err = c.Exec(ctx, "postgres", "SELECT * FROM missing")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "42P01" {
		t.Fatalf("exec of a bad statement: %v, want SQLSTATE 42P01", err)
	}
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(c.Dir); !os.IsNotExist(err) {
		t.Fatalf("after Stop, %s: %v, want it removed", c.Dir, err)
	}
	if _, err := pgconn.Connect(ctx, c.DSN("postgres", "", "postgres")); err == nil {
		t.Fatal("connect after Stop succeeded")
	}
}

// TestStopStartServer restarts a cluster in each shutdown mode: open
// sessions end, data survives, the port stays the same, and Stop works
// whether the server is up or down.
func TestStopStartServer(t *testing.T) {
	c, err := pgtest.Start()
	if errors.Is(err, pgtest.ErrNoPostgres) {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := c.Exec(ctx, "postgres", "CREATE TABLE t (x int); INSERT INTO t VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	dsn := c.DSN("postgres", "", "postgres")
	for _, mode := range []string{"fast", "immediate"} {
		t.Run(mode, func(t *testing.T) {
			conn, err := pgconn.Connect(ctx, dsn)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(context.Background())
			port := c.Port
			if err := c.StopServer(mode); err != nil {
				t.Fatal(err)
			}
			if _, err := conn.Exec(ctx, "SELECT 1").ReadAll(); err == nil {
				t.Error("a session survived StopServer")
			}
			if _, err := pgconn.Connect(ctx, dsn); err == nil {
				t.Error("connect while the server is down succeeded")
			}
			if err := c.StartServer(); err != nil {
				t.Fatal(err)
			}
			if c.Port != port {
				t.Errorf("port changed from %d to %d", port, c.Port)
			}
			// Fails (division by zero) unless the row survived.
			if err := c.Exec(ctx, "postgres", "SELECT 1 / (count(*) = 1)::int FROM t"); err != nil {
				t.Fatalf("after restart: %v", err)
			}
		})
	}
	if err := c.StartServer(); err == nil {
		t.Error("StartServer of a running server succeeded")
	}
	if err := c.StopServer("sideways"); err == nil {
		t.Error("StopServer with an unknown mode succeeded")
	}
	if err := c.StopServer("fast"); err != nil {
		t.Fatal(err)
	}
	if err := c.Stop(); err != nil {
		t.Fatalf("Stop of a stopped server: %v", err)
	}
	if _, err := os.Stat(c.Dir); !os.IsNotExist(err) {
		t.Fatalf("after Stop, %s: %v, want it removed", c.Dir, err)
	}
}
