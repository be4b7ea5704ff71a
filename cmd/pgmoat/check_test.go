package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgmoat/pgmoat/config"
	"github.com/pgmoat/pgmoat/deploy/demo"
	"github.com/pgmoat/pgmoat/internal/pgtest"
	"github.com/pgmoat/pgmoat/policy"
	"github.com/pgmoat/pgmoat/proxy"
)

// The check tests need PostgreSQL: the binary's shared cluster (demo schema
// in database "app") is stopped after the tests.
func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// checkConfig returns a config file for pgmoat's role on database db of c,
// declaring plans shared as the demo does.
func checkConfig(t *testing.T, c *pgtest.Cluster, db string) string {
	t.Helper()
	return writeConfig(t, fmt.Sprintf("upstream:\n  dsn: %q\npolicy:\n  shared:\n    - name: public.plans\n",
		c.DSN("pgmoat", "pgmoat_secret", db)))
}

// runCheck runs args through execute and returns the exit code and output.
func runCheck(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = execute(context.Background(), args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestCheckDemo(t *testing.T) {
	clearEnv(t)
	c := pgtest.Shared(t)
	cfg := checkConfig(t, c, "app")

	t.Run("make run's configuration passes", func(t *testing.T) {
		// deploy/demo/pgmoat.yaml declares audit_raw internal.
		yaml := strings.ReplaceAll(demo.Config, "@PGPORT@", strconv.Itoa(c.Port))
		yaml = strings.ReplaceAll(yaml, "host=127.0.0.1", "host="+c.Host)
		code, stdout, stderr := runCheck(t, "check", "--config", writeConfig(t, yaml))
		if code != 0 || stdout != "no findings\n" {
			t.Errorf("exit code %d, stdout %q, stderr %q; want 0 and no findings", code, stdout, stderr)
		}
	})

	t.Run("audit_raw fails the check", func(t *testing.T) {
		code, stdout, stderr := runCheck(t, "check", "--config", cfg)
		if code != 1 {
			t.Errorf("exit code %d, want 1; stderr %q", code, stderr)
		}
		if !strings.HasPrefix(stdout, "SEVERITY  CODE") || !hasRow(stdout, "error", "rls_disabled", "public.audit_raw") ||
			!strings.HasSuffix(stdout, "\n2 errors, 1 warning\n") {
			t.Errorf("output:\n%s", stdout)
		}
		if !strings.Contains(stderr, "pgmoat: check: 2 finding(s) of severity error") {
			t.Errorf("stderr = %q", stderr)
		}
	})
	t.Run("json", func(t *testing.T) {
		code, stdout, _ := runCheck(t, "check", "--config", cfg, "--format", "json")
		if code != 1 {
			t.Errorf("exit code %d, want 1", code)
		}
		var fs []policy.Finding
		if err := json.Unmarshal([]byte(stdout), &fs); err != nil {
			t.Fatalf("not a JSON array of findings: %v\n%s", err, stdout)
		}
		var got []string
		for _, f := range fs {
			got = append(got, string(f.Severity)+" "+f.Code+" "+f.Object)
		}
		want := "warning tenant_column_no_check public.audit_raw|error rls_disabled public.audit_raw|error no_tenant_policy public.audit_raw"
		if strings.Join(got, "|") != want {
			t.Errorf("findings %q, want %q", got, want)
		}
	})
	t.Run("ignoring audit_raw passes", func(t *testing.T) {
		code, stdout, stderr := runCheck(t, "check", "--config", cfg, "--ignore", "public.audit_raw")
		if code != 0 || stdout != "no findings\n" {
			t.Errorf("exit code %d, stdout %q, stderr %q; want 0 and no findings", code, stdout, stderr)
		}
		code, stdout, _ = runCheck(t, "check", "--config", cfg, "--ignore", "audit_raw", "--format", "json")
		if code != 0 || strings.TrimSpace(stdout) != "[]" {
			t.Errorf("json: exit code %d, stdout %q; want 0 and []", code, stdout)
		}
	})
	t.Run("warnings do not fail", func(t *testing.T) {
		// The ignored name matches nothing: a warning only.
		code, stdout, _ := runCheck(t, "check", "--config", cfg, "--ignore", "public.audit_raw", "--ignore", "public.nope")
		if code != 0 || !hasRow(stdout, "warning", "ignored_object_missing", "public.nope") || !strings.Contains(stdout, "0 errors, 1 warning") {
			t.Errorf("exit code %d, stdout:\n%s", code, stdout)
		}
	})
}

// brokenSchema is a tenant table with nothing protecting it, owned by
// app_owner (not pgmoat's role), with rows for two tenants.
const brokenSchema = `
GRANT USAGE, CREATE ON SCHEMA public TO app_owner;
SET ROLE app_owner;
CREATE TABLE public.plans (id int PRIMARY KEY, name text);
CREATE TABLE public.events (id bigserial PRIMARY KEY, tenant_id text, payload text);
GRANT SELECT, INSERT ON public.events, public.plans TO pgmoat;
GRANT USAGE ON SEQUENCE public.events_id_seq TO pgmoat;
RESET ROLE;
INSERT INTO public.events (tenant_id, payload) VALUES ('acme', 'a1'), ('acme', 'a2'), ('globex', 'g1'), ('', 'empty');
`

func TestCheckFixSQL(t *testing.T) {
	clearEnv(t)
	c := pgtest.Shared(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const db = "check_fix"
	if err := c.Exec(ctx, "postgres", "CREATE DATABASE "+db); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Exec(context.Background(), "postgres", "DROP DATABASE "+db+" WITH (FORCE)"); err != nil {
			t.Error(err)
		}
	})
	if err := c.Exec(ctx, db, brokenSchema); err != nil {
		t.Fatal(err)
	}
	cfg := checkConfig(t, c, db)

	code, stdout, _ := runCheck(t, "check", "--config", cfg)
	if code != 1 {
		t.Errorf("broken table: exit code %d, want 1", code)
	}
	for _, w := range []string{"error rls_disabled", "error no_tenant_policy", "warning tenant_column_nullable", "warning no_tenant_index", "warning tenant_column_no_check"} {
		sev, code, _ := strings.Cut(w, " ")
		if !hasRow(stdout, sev, code, "public.events") {
			t.Errorf("output lacks %s for public.events:\n%s", w, stdout)
		}
	}

	code, fix, _ := runCheck(t, "check", "--config", cfg, "--fix-sql")
	if code != 1 {
		t.Errorf("--fix-sql: exit code %d, want 1 (the database still has errors)", code)
	}
	// The '' row would violate the new CHECK: the migration fails as a
	// whole and changes nothing.
	err := c.Exec(ctx, db, fix)
	if pgErr, ok := asPgError(err); !ok || pgErr.Code != "23514" {
		t.Fatalf("migration over a row with an empty tenant: err = %v, want SQLSTATE 23514 (check_violation)", err)
	}
	if code, _, _ := runCheck(t, "check", "--config", cfg); code != 1 {
		t.Errorf("after the failed migration: exit code %d, want 1", code)
	}
	// Backfill, as the migration's comments ask, then apply it.
	if err := c.Exec(ctx, db, "DELETE FROM public.events WHERE tenant_id = ''"); err != nil {
		t.Fatal(err)
	}
	if err := c.Exec(ctx, db, fix); err != nil {
		t.Fatalf("apply:\n%s\n%v", fix, err)
	}

	code, stdout, stderr := runCheck(t, "check", "--config", cfg)
	if code != 0 {
		t.Errorf("after the fix: exit code %d, want 0; stderr %q\n%s", code, stderr, stdout)
	}
	// Only the NOT NULL that needs a backfill remains, as a warning.
	if !hasRow(stdout, "warning", "tenant_column_nullable", "public.events") || !strings.HasSuffix(stdout, "\n0 errors, 1 warning\n") {
		t.Errorf("after the fix:\n%s", stdout)
	}

	// The fixed table isolates tenants for pgmoat's role, which does not own it.
	conn, err := pgconn.Connect(ctx, c.DSN("pgmoat", "pgmoat_secret", db))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	results, err := conn.Exec(ctx, `
SELECT tableowner FROM pg_tables WHERE tablename = 'events';
SELECT count(*) FROM public.events;
BEGIN; SET LOCAL app.current_tenant_id = 'acme'; SELECT count(*) FROM public.events; COMMIT;
SELECT count(*) FROM public.events`).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range results {
		for _, row := range r.Rows {
			got = append(got, string(row[0]))
		}
	}
	// Owner; no tenant set: 0 rows; acme: 2; after the transaction the
	// setting reads '' and NULLIF keeps it at 0.
	if want := "app_owner 0 2 0"; strings.Join(got, " ") != want {
		t.Errorf("got %q, want %q", strings.Join(got, " "), want)
	}
}

func TestLogAudit(t *testing.T) {
	clearEnv(t)
	c := pgtest.Shared(t)
	cfg := config.Default()
	cfg.Upstream.DSN = c.DSN("pgmoat", "pgmoat_secret", "app")
	cfg.Policy.Shared = []config.SharedTable{{Name: "public.plans"}}
	connector, err := proxy.NewPgConnector(cfg.Upstream.DSN, "", 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	logAudit(context.Background(), connector, cfg, newLogger(config.Log{Level: "info", Format: "json"}, &buf))
	var got []string
	for line := range strings.Lines(buf.String()) {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("not JSON: %q", line)
		}
		got = append(got, fmt.Sprint(rec["level"], " ", rec["code"], " ", rec["object"]))
	}
	want := []string{
		"WARN tenant_column_no_check public.audit_raw",
		"ERROR rls_disabled public.audit_raw",
		"ERROR no_tenant_policy public.audit_raw",
		"INFO <nil> <nil>",
	}
	if !slices.Equal(got, want) {
		t.Errorf("log:\n%s\nwant records %q", buf.String(), want)
	}
}

func TestCheckErrors(t *testing.T) {
	clearEnv(t)
	t.Run("bad format", func(t *testing.T) {
		code, _, stderr := runCheck(t, "check", "--config", writeConfig(t, goodConfig), "--format", "xml")
		if code != 1 || !strings.Contains(stderr, `--format: must be table or json, not "xml"`) {
			t.Errorf("exit code %d, stderr %q", code, stderr)
		}
	})
	t.Run("bad config", func(t *testing.T) {
		code, _, stderr := runCheck(t, "check", "--config", writeConfig(t, "bogus: 1\n"))
		if code != 1 || !strings.Contains(stderr, "bogus: unknown key") {
			t.Errorf("exit code %d, stderr %q", code, stderr)
		}
	})
	t.Run("upstream unreachable", func(t *testing.T) {
		// Port 1 on loopback refuses connections at once.
		cfg := writeConfig(t, "upstream:\n  dsn: host=127.0.0.1 port=1 user=pgmoat dbname=app sslmode=disable\n  connect_timeout: 5s\n")
		code, stdout, stderr := runCheck(t, "check", "--config", cfg)
		if code != 1 || stdout != "" || !strings.Contains(stderr, "pgmoat: check: connect upstream") {
			t.Errorf("exit code %d, stdout %q, stderr %q", code, stdout, stderr)
		}
	})
}

func TestCheckHelp(t *testing.T) {
	stdout, _, err := runCmd(t, "check", "--help")
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"--fix-sql", "--ignore", "--format", "--tenant-column", "Exit status: 0 when no finding has severity error", "NULLIF"} {
		if !strings.Contains(stdout, w) {
			t.Errorf("check --help does not mention %q", w)
		}
	}
}

func asPgError(err error) (*pgconn.PgError, bool) {
	var pgErr *pgconn.PgError
	ok := errors.As(err, &pgErr)
	return pgErr, ok
}

// hasRow reports whether the findings table has a row for severity, code
// and object.
func hasRow(table, severity, code, object string) bool {
	for line := range strings.Lines(table) {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == severity && f[1] == code && f[2] == object {
			return true
		}
	}
	return false
}
