package proxy

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/pgmoat/pgmoat/config"
)

// reloadProxy reloads p with a copy of its running configuration changed by
// edit, and a new authenticator for its users.
func reloadProxy(t *testing.T, p *testProxy, edit func(*config.Config)) (int, error) {
	t.Helper()
	next := *p.srv.live().cfg
	next.Users = slices.Clone(next.Users) // the running one shares testUsers
	edit(&next)
	auth, err := NewPasswordAuth(next.Users)
	if err != nil {
		t.Fatal(err)
	}
	return p.srv.Reload(&next, auth)
}

// tryConnect connects to p as user and returns the error's SQLSTATE ("" on
// success; the connection is closed at the end of the test).
func tryConnect(t *testing.T, p *testProxy, user, password string) (*pgx.Conn, string) {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), p.dsn(user, password))
	if err != nil {
		if sqlstate(err) == "" {
			t.Fatalf("connect as %s: %v", user, err)
		}
		return nil, sqlstate(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn, ""
}

func tenantOf(t *testing.T, conn *pgx.Conn) string {
	t.Helper()
	var s string
	if err := conn.QueryRow(context.Background(), "select current_setting('app.current_tenant_id')").Scan(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

func removeUser(name string) func(*config.Config) {
	return func(c *config.Config) {
		c.Users = slices.DeleteFunc(c.Users, func(u config.User) bool { return u.Name == name })
	}
}

func editUser(name string, edit func(*config.User)) func(*config.Config) {
	return func(c *config.Config) {
		i := slices.IndexFunc(c.Users, func(u config.User) bool { return u.Name == name })
		edit(&c.Users[i])
	}
}

func TestReloadAddsUser(t *testing.T) {
	p := startProxy(t, nil)
	before := p.connect(t, "acme_app", "acme_secret", pgx.QueryExecModeSimpleProtocol)
	if _, code := tryConnect(t, p, "initech_app", "initech_secret"); code != "28P01" {
		t.Fatalf("unknown user: SQLSTATE %q, want 28P01", code)
	}

	revoked, err := reloadProxy(t, p, func(c *config.Config) {
		c.Users = append(c.Users, config.User{Name: "initech_app", Password: "initech_secret", Tenant: "globex"})
	})
	if err != nil || revoked != 0 {
		t.Fatalf("Reload = %d, %v; want 0 sessions revoked", revoked, err)
	}
	conn, code := tryConnect(t, p, "initech_app", "initech_secret")
	if code != "" {
		t.Fatalf("new user after reload: SQLSTATE %s", code)
	}
	if got := tenantOf(t, conn); got != "globex" {
		t.Errorf("new user's tenant %q, want globex", got)
	}
	if got := tenantOf(t, before); got != "acme" {
		t.Errorf("session from before the reload: tenant %q, want acme", got)
	}
}

// A user removed or changed by a reload loses its sessions at their next
// transaction boundary; other users' sessions stay.
func TestReloadRevokes(t *testing.T) {
	for _, tc := range []struct {
		name, user, password string
		edit                 func(*config.Config)
		// newTenant is the tenant of a new login with the old password,
		// "" if it must fail.
		newTenant string
	}{
		{"removed", "acme_app", "acme_secret", removeUser("acme_app"), ""},
		{"tenant changed", "acme_app", "acme_secret", editUser("acme_app", func(u *config.User) { u.Tenant = "globex" }), "globex"},
		{"read_only changed", "acme_app", "acme_secret", editUser("acme_app", func(u *config.User) { u.ReadOnly = true }), "acme"},
		{"password changed", "acme_app", "acme_secret", editUser("acme_app", func(u *config.User) { u.Password = "rotated" }), ""},
		{"admin removed", "dba", "dba_secret", removeUser("dba"), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			p := startProxy(t, nil)
			idle := p.connect(t, tc.user, tc.password, pgx.QueryExecModeSimpleProtocol)
			inTx := p.connect(t, tc.user, tc.password, pgx.QueryExecModeCacheStatement)
			other := p.connect(t, "globex_app", "globex_secret", pgx.QueryExecModeSimpleProtocol)
			tx, err := inTx.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.Exec(ctx, "select 1"); err != nil {
				t.Fatal(err)
			}

			revoked, err := reloadProxy(t, p, tc.edit)
			if err != nil || revoked != 2 {
				t.Fatalf("Reload = %d, %v; want 2 sessions revoked", revoked, err)
			}

			if _, err := idle.Exec(ctx, "select 1"); sqlstate(err) != "57P01" {
				t.Errorf("idle session: %v, want SQLSTATE 57P01", err)
			}
			// The open transaction finishes, then the session ends.
			if _, err := tx.Exec(ctx, "select $1::int", 2); err != nil {
				t.Errorf("statement in the open transaction: %v", err)
			}
			if err := tx.Commit(ctx); err != nil {
				t.Errorf("COMMIT of the open transaction: %v", err)
			}
			if _, err := inTx.Exec(ctx, "select 1"); sqlstate(err) != "57P01" {
				t.Errorf("after COMMIT: %v, want SQLSTATE 57P01", err)
			}
			if got := tenantOf(t, other); got != "globex" {
				t.Errorf("another user's session: tenant %q", got)
			}

			conn, code := tryConnect(t, p, tc.user, tc.password)
			switch {
			case tc.newTenant == "" && code != "28P01":
				t.Errorf("new login: SQLSTATE %q, want 28P01", code)
			case tc.newTenant != "" && code != "":
				t.Errorf("new login: SQLSTATE %s", code)
			case tc.newTenant != "":
				if got := tenantOf(t, conn); got != tc.newTenant {
					t.Errorf("new login: tenant %q, want %q", got, tc.newTenant)
				}
			}
		})
	}
}

func TestReloadRefusesInvalid(t *testing.T) {
	p := startProxy(t, nil)
	before := p.connect(t, "acme_app", "acme_secret", pgx.QueryExecModeSimpleProtocol)
	running := p.srv.live()

	_, err := reloadProxy(t, p, func(c *config.Config) {
		c.Users = nil
		c.Policy.Mode = "permissive"
	})
	if err == nil {
		t.Fatal("Reload accepted an invalid configuration")
	}
	if p.srv.live() != running {
		t.Error("the running configuration changed")
	}
	if got := tenantOf(t, before); got != "acme" {
		t.Errorf("open session: tenant %q, want acme", got)
	}
	if _, code := tryConnect(t, p, "globex_app", "globex_secret"); code != "" {
		t.Errorf("new login of a configured user: SQLSTATE %s", code)
	}
}

// The policy mode applies to the next statement of every session.
func TestReloadPolicyMode(t *testing.T) {
	ctx := context.Background()
	p := startProxy(t, nil)
	open := p.connect(t, "acme_app", "acme_secret", pgx.QueryExecModeSimpleProtocol)
	const unprotected = "select count(*) from audit_raw"
	if _, err := open.Exec(ctx, unprotected); sqlstate(err) != "42501" {
		t.Fatalf("enforce: %v, want 42501", err)
	}
	if _, err := reloadProxy(t, p, func(c *config.Config) { c.Policy.Mode = config.ModeAudit }); err != nil {
		t.Fatal(err)
	}
	fresh := p.connect(t, "acme_app", "acme_secret", pgx.QueryExecModeCacheStatement)
	for name, conn := range map[string]*pgx.Conn{"open session": open, "new session": fresh} {
		if _, err := conn.Exec(ctx, unprotected); err != nil {
			t.Errorf("%s in audit mode: %v", name, err)
		}
	}
	if got := testutil.ToFloat64(p.metrics.statements.WithLabelValues(DecisionAudited)); got != 2 {
		t.Errorf("audited statements %v, want 2", got)
	}
	// Audit mode never gives up the tenant: what could change it stays
	// refused, and the session keeps its tenant.
	for _, sql := range []string{
		"set app.current_tenant_id = 'globex'",
		"select set_config('app.current_tenant_id', 'globex', false)",
		"set role postgres",
		"do $$ begin perform set_config('app.current_tenant_id', 'globex', false); end $$",
		"selec 1",
	} {
		if _, err := fresh.Exec(ctx, sql); sqlstate(err) != "42501" && sqlstate(err) != "42601" {
			t.Errorf("audit mode, %s: %v, want a refusal", sql, err)
		}
	}
	if got := tenantOf(t, fresh); got != "acme" {
		t.Errorf("tenant %q after the refusals, want acme", got)
	}
}

// A session that authenticated with the configuration before a reload but
// registers after it is checked against the new one.
func TestRegisterAfterReload(t *testing.T) {
	cfg := config.Default()
	cfg.Upstream.DSN = "postgres://pgmoat@127.0.0.1:5432/app"
	cfg.Users = []config.User{{Name: "a", Password: "a", Tenant: "t"}, {Name: "b", Password: "b", Tenant: "t"}}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	s := NewServer(Options{Config: cfg, Logger: log})
	client, server := net.Pipe()
	defer client.Close()
	defer server.Close()
	c := &session{srv: s, conn: server, log: log, id: Identity{User: "a", Tenant: "t"}, reads: newReadStop(server)}
	c.reload.started = s.live()

	next := *cfg
	next.Users = cfg.Users[1:]
	if n, err := s.Reload(&next, nil); err != nil || n != 0 {
		t.Fatalf("Reload = %d, %v; want 0 (the session is not registered yet)", n, err)
	}
	s.register(c)
	defer s.unregister(c)
	if !c.reload.revoked.Load() {
		t.Fatal("not revoked at register")
	}
	// An admin-like session (no rewrite state) with no transaction open is
	// at a boundary: its read deadline has fired.
	var ne net.Error
	if _, err := server.Read(make([]byte, 1)); !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("read after revoke: %v, want a timeout", err)
	}
}

func TestReloadMetrics(t *testing.T) {
	m := NewMetrics(prometheus.NewRegistry(), 10)
	started := testutil.ToFloat64(m.reloadTime)
	if started <= 0 {
		t.Fatalf("last good reload time at startup = %v", started)
	}
	m.ConfigReloaded(errors.New("bad"))
	if got := testutil.ToFloat64(m.reloadTime); got != started {
		t.Errorf("a refused reload moved the last good reload time: %v -> %v", started, got)
	}
	if got := testutil.ToFloat64(m.reloadOK); got != 0 {
		t.Errorf("last reload successful = %v after a refused one", got)
	}
	m.ConfigReloaded(nil)
	if got := testutil.ToFloat64(m.reloadTime); got < started {
		t.Errorf("last good reload time %v, before startup's %v", got, started)
	}
	if got := testutil.ToFloat64(m.reloadOK); got != 1 {
		t.Errorf("last reload successful = %v after a good one", got)
	}
}

// TestReloadRevokedTransactionEnds: a revoked session that keeps its
// transaction open does not keep its old identity for ever: it ends at the
// drain deadline (limits.shutdown_timeout), as at shutdown.
func TestReloadRevokedTransactionEnds(t *testing.T) {
	ctx := context.Background()
	p := startProxy(t, func(c *config.Config) { c.Limits.ShutdownTimeout = 300 * time.Millisecond })
	conn := p.connect(t, "acme_app", "acme_secret", pgx.QueryExecModeSimpleProtocol)
	if _, err := conn.Exec(ctx, "begin"); err != nil {
		t.Fatal(err)
	}
	if n, err := reloadProxy(t, p, removeUser("acme_app")); err != nil || n != 1 {
		t.Fatalf("Reload = %d, %v; want 1 session revoked", n, err)
	}
	waitFor(t, func() bool {
		_, err := conn.Exec(ctx, "select 1")
		return sqlstate(err) == "57P01" || conn.IsClosed()
	})
}
