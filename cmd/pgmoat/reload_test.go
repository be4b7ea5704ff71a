package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgmoat/pgmoat/config"
	"github.com/pgmoat/pgmoat/internal/pgtest"
	"github.com/pgmoat/pgmoat/policy"
	"github.com/pgmoat/pgmoat/proxy"
)

// syncBuffer is a bytes.Buffer that the proxy's logger and the test may use
// at the same time.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// anyPort is the listen and metrics_listen of the tests' configurations:
// the kernel picks free ports, which pgmoat logs (startRun reads them).
// Ports picked in advance could be taken by someone else meanwhile.
const anyPort = "127.0.0.1:0"

// runningProxy is `pgmoat run` executed in-process.
type runningProxy struct {
	addr, metricsAddr string // where it listens
	stderr            *syncBuffer
	done              chan int // the exit code
}

// startRun executes `pgmoat run --config path` in-process until ctx is
// done, and returns once it listens, with the addresses it logged.
func startRun(t *testing.T, ctx context.Context, path string) *runningProxy {
	t.Helper()
	p := &runningProxy{stderr: &syncBuffer{}, done: make(chan int, 1)}
	go func() { p.done <- execute(ctx, []string{"run", "--config", path}, io.Discard, p.stderr) }()
	p.await(t, "listening", func() error {
		m := listeningRE.FindStringSubmatch(p.stderr.String())
		if m == nil {
			return errors.New("no \"pgmoat listening\" log record yet")
		}
		p.addr, p.metricsAddr = m[1], m[2]
		return nil
	})
	return p
}

var listeningRE = regexp.MustCompile(`"msg":"pgmoat listening","listen":"([^"]+)","metrics_listen":"([^"]+)"`)

// await polls cond until it returns nil. It fails the test if pgmoat exits
// first or cond still fails after a generous bound (this is a wait for an
// event, not a timing assertion).
func (p *runningProxy) await(t *testing.T, what string, cond func() error) {
	t.Helper()
	bound := time.After(30 * time.Second)
	for {
		err := cond()
		if err == nil {
			return
		}
		select {
		case code := <-p.done:
			t.Fatalf("%s: pgmoat exited with %d:\n%s", what, code, p.stderr.String())
		case <-bound:
			t.Fatalf("%s: still %v\nlog:\n%s", what, err, p.stderr.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// connect logs in as user and returns the connection or the SQLSTATE of the
// refusal.
func (p *runningProxy) connect(t *testing.T, user, password string) (*pgx.Conn, error) {
	t.Helper()
	host, port, _ := net.SplitHostPort(p.addr)
	conn, err := pgx.Connect(context.Background(), fmt.Sprintf("host=%s port=%s user=%s password=%s dbname=app sslmode=disable", host, port, user, password))
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn, nil
}

// metric reads one sample (name with its labels, as exposed) from /metrics.
func (p *runningProxy) metric(name string) (float64, error) {
	resp, err := http.Get("http://" + p.metricsAddr + "/metrics")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			return strconv.ParseFloat(v, 64)
		}
	}
	return 0, fmt.Errorf("%s not exposed", name)
}

// awaitMetric waits until the metric reaches at least want.
func (p *runningProxy) awaitMetric(t *testing.T, name string, want float64) {
	t.Helper()
	p.await(t, name, func() error {
		v, err := p.metric(name)
		if err == nil && v < want {
			err = fmt.Errorf("%s = %v, want %v", name, v, want)
		}
		return err
	})
}

func sqlstate(err error) string {
	if pe, ok := errors.AsType[*pgconn.PgError](err); ok {
		return pe.Code
	}
	return ""
}

const reloadConfig = `listen: %s
metrics_listen: %s
upstream:
  dsn: %q
users:
  - name: acme_app
    password_file: acme.pass
    tenant: acme
%spolicy:
  shared:
    - name: public.plans
log:
  level: %s
  audit_file: %s
`

// TestRunReload drives `pgmoat run`: SIGHUP re-reads a changed password file
// (which the file watch does not see), a changed config file is reloaded
// on its own, an invalid one is refused and counted, and a changed listen
// address is reported rather than applied.
func TestRunReload(t *testing.T) {
	clearEnv(t)
	c := pgtest.Shared(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "pgmoat.yaml")
	write := func(name, content string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	dsn := c.DSN("pgmoat", "pgmoat_secret", "app")
	auditPath := filepath.Join(dir, "audit.log")
	write("acme.pass", "acme_secret\n")
	write("pgmoat.yaml", fmt.Sprintf(reloadConfig, anyPort, anyPort, dsn, "", "info", auditPath))

	ctx, cancel := context.WithCancel(context.Background())
	p := startRun(t, ctx, path)
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cancel()
			<-p.done
		}
	}
	defer stop()

	var acme *pgx.Conn
	p.await(t, "first login", func() (err error) {
		acme, err = p.connect(t, "acme_app", "acme_secret")
		return err
	})

	t.Run("SIGHUP", func(t *testing.T) {
		// A table created after startup is unknown until the catalog is
		// refreshed; SIGHUP refreshes it at once.
		ctx := context.Background()
		if err := c.Exec(ctx, "app", `CREATE TABLE sighup_new (tenant_id text NOT NULL);
			ALTER TABLE sighup_new ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
			CREATE POLICY p ON sighup_new USING (tenant_id = current_setting('app.current_tenant_id', true));
			GRANT SELECT ON sighup_new TO pgmoat`); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Exec(context.Background(), "app", "DROP TABLE sighup_new") })
		if _, err := acme.Exec(ctx, "select * from sighup_new"); sqlstate(err) != "42501" {
			t.Fatalf("new table before the refresh: %v, want 42501 (unknown relation)", err)
		}
		write("acme.pass", "rotated\n")
		// A log rotator moves the audit log away before SIGHUP.
		if err := os.Rename(auditPath, auditPath+".1"); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		p.awaitMetric(t, `pgmoat_config_reloads_total{result="success"}`, 1)
		if _, err := p.connect(t, "acme_app", "rotated"); err != nil {
			t.Errorf("login with the new password: %v", err)
		}
		if _, err := p.connect(t, "acme_app", "acme_secret"); sqlstate(err) != "28P01" {
			t.Errorf("login with the old password: %v, want 28P01", err)
		}
		// Its audit line went to a new file at the same path.
		if data, err := os.ReadFile(auditPath); err != nil || !strings.Contains(string(data), `"event":"auth_failed"`) {
			t.Errorf("audit log after SIGHUP: %q, %v; want the failed login", data, err)
		}
		if _, err := acme.Exec(context.Background(), "select 1"); sqlstate(err) != "57P01" {
			t.Errorf("session with the old credentials: %v, want 57P01", err)
		}
		p.awaitMetric(t, `pgmoat_catalog_refreshes_total{result="success"}`, 2)
		rotated, err := p.connect(t, "acme_app", "rotated")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := rotated.Exec(ctx, "select * from sighup_new"); err != nil {
			t.Errorf("new table after SIGHUP: %v", err)
		}
	})

	t.Run("file change", func(t *testing.T) {
		globex := "  - name: globex_app\n    password: globex_secret\n    tenant: globex\n"
		// Another listen address, never bound: it needs a restart.
		write("pgmoat.yaml", fmt.Sprintf(reloadConfig, "127.0.0.1:1", anyPort, dsn, globex, "debug", auditPath))
		p.awaitMetric(t, `pgmoat_config_reloads_total{result="success"}`, 2)
		// listen needs a restart: the old address still serves.
		conn, err := p.connect(t, "globex_app", "globex_secret")
		if err != nil {
			t.Fatalf("login of the added user: %v", err)
		}
		var tenant string
		if err := conn.QueryRow(context.Background(), "select current_setting('app.current_tenant_id')").Scan(&tenant); err != nil || tenant != "globex" {
			t.Errorf("tenant %q, %v; want globex", tenant, err)
		}
	})

	t.Run("invalid config", func(t *testing.T) {
		write("pgmoat.yaml", fmt.Sprintf(reloadConfig, anyPort, anyPort, dsn, "", "loud", auditPath))
		p.awaitMetric(t, `pgmoat_config_reloads_total{result="failure"}`, 1)
		if v, err := p.metric("pgmoat_config_last_reload_successful"); err != nil || v != 0 {
			t.Errorf("pgmoat_config_last_reload_successful = %v, %v; want 0", v, err)
		}
		if _, err := p.connect(t, "globex_app", "globex_secret"); err != nil {
			t.Errorf("a user of the running configuration: %v", err)
		}
	})

	stop()
	var restart, refused, debug bool
	for line := range strings.Lines(p.stderr.String()) {
		var rec struct {
			Level, Msg string
			Keys       []string
		}
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line is not JSON: %q", line)
		}
		switch {
		case rec.Level == "WARN" && strings.Contains(rec.Msg, "only after a restart"):
			restart = slices.Equal(rec.Keys, []string{"listen"})
		case rec.Level == "ERROR" && strings.HasPrefix(rec.Msg, "configuration reload refused"):
			refused = true
		case rec.Level == "DEBUG":
			debug = true
		}
	}
	if !restart || !refused || !debug {
		t.Errorf("log: restart warning naming listen %v, refusal %v, debug records after log.level: debug %v\n%s",
			restart, refused, debug, p.stderr.String())
	}
}

// A reload rebuilds the policy from the current catalog only when the
// policy keys changed.
func TestPolicyHolderSetConfig(t *testing.T) {
	f, err := os.Open("testdata/demo_catalog.json")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cat, err := policy.ReadCatalogJSON(f)
	if err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	cfg.Policy.Shared = []config.SharedTable{{Name: "public.plans"}}
	p := &policyHolder{cfg: cfg, cat: cat, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	p.engine.Store(policy.NewEngine(proxy.PolicyRules(cfg), cat, cfg.Policy.CacheSize))
	const sql = "select * from plans"
	sess := &policy.Session{Tenant: "acme", User: "acme_app"}
	if _, v := p.engine.Load().Check(sql, sess); v != nil {
		t.Fatalf("plans shared: %v", v)
	}

	modeOnly := *cfg
	modeOnly.Policy.Mode = config.ModeAudit
	before := p.engine.Load()
	p.setConfig(&modeOnly)
	if p.engine.Load() != before {
		t.Error("a change of policy.mode rebuilt the engine (and dropped its cache)")
	}

	notShared := modeOnly
	notShared.Policy.Shared = nil
	p.setConfig(&notShared)
	if _, v := p.engine.Load().Check(sql, sess); v == nil || v.SQLState != "42501" {
		t.Errorf("plans no longer shared: violation %v, want 42501", v)
	}
}

// TestNewPolicySettingEndsSessions: a tenant may SET a custom setting that
// no policy reads. When a policy starts to read it (an "OR
// current_setting('app.x') = 'on'" switch), the catalog refresh ends the
// open tenant sessions, which may have set it for good, at once, inside a
// transaction too (the new policy applies from its next statement), and
// new sessions may not set it.
func TestNewPolicySettingEndsSessions(t *testing.T) {
	clearEnv(t)
	c := pgtest.Shared(t)
	ctx := context.Background()
	t.Setenv("PGMOAT_POLICY_CATALOG_REFRESH", "100ms")
	path := writeConfig(t, fmt.Sprintf(signalConfig, anyPort, anyPort, c.DSN("pgmoat", "pgmoat_secret", "app")))
	rctx, cancel := context.WithCancel(ctx)
	p := startRun(t, rctx, path)
	t.Cleanup(func() { cancel(); <-p.done })

	var acme *pgx.Conn
	p.await(t, "login", func() (err error) {
		acme, err = p.connect(t, "acme_app", "acme_secret")
		return err
	})
	for _, sql := range []string{"set app.revoke_switch = 'on'", "begin"} {
		if _, err := acme.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	if err := c.Exec(ctx, "app", `CREATE TABLE revoke_switch (tenant_id text NOT NULL);
		ALTER TABLE revoke_switch ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;
		CREATE POLICY p ON revoke_switch USING (tenant_id = current_setting('app.current_tenant_id', true)
			OR current_setting('app.revoke_switch', true) = 'on');
		GRANT SELECT ON revoke_switch TO pgmoat`); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Exec(context.Background(), "app", "DROP TABLE revoke_switch") })

	p.await(t, "the session closed", func() error {
		_, err := acme.Exec(ctx, "select 1")
		switch {
		case err == nil:
			return errors.New("the session is still open")
		case sqlstate(err) != "57P01" || !strings.Contains(err.Error(), "app.revoke_switch"):
			t.Fatalf("open session after the policy change: %v, want 57P01 naming the setting", err)
		}
		return nil
	})
	fresh, err := p.connect(t, "acme_app", "acme_secret")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fresh.Exec(ctx, "set app.revoke_switch = 'on'"); sqlstate(err) != "42501" {
		t.Errorf("set the switch in a new session: %v, want 42501", err)
	}
}
