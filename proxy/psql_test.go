package proxy

import (
	"bytes"
	"net"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// psqlPath finds psql: on PATH, else next to the newest installed server.
func psqlPath(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("psql"); err == nil {
		return p
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/psql")
	if len(matches) == 0 {
		t.Fatal("psql not found: install postgresql-client (.ci/run does)")
	}
	return matches[len(matches)-1]
}

// psql runs psql through the proxy with the given script on stdin and
// returns stdout and stderr. Errors do not stop the script; VERBOSITY
// verbose puts the SQLSTATE into each error line ("ERROR:  42501: ...").
func (p *testProxy) psql(t *testing.T, user, password, script string) (stdout, stderr string) {
	t.Helper()
	host, port, _ := net.SplitHostPort(p.addr)
	dsn := "host=" + host + " port=" + port + " user=" + user + " dbname=app"
	cmd := exec.Command(psqlPath(t), "-X", "-q", "-At", "-v", "VERBOSITY=verbose", dsn)
	cmd.Env = append(cmd.Environ(), "PGPASSWORD="+password, "PGCONNECT_TIMEOUT=10")
	cmd.Stdin = strings.NewReader(script)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("psql: %v\nstdout:\n%s\nstderr:\n%s", err, out.String(), errb.String())
	}
	return out.String(), errb.String()
}

// TestPsql drives the real psql client: its own startup parameters, its
// catalog queries for \d, transactions and blocks.
func TestPsql(t *testing.T) {
	p := startProxy(t, nil)
	for _, u := range []struct{ user, pass, tenant string }{{"acme_app", "acme_secret", "acme"}, {"globex_app", "globex_secret", "globex"}} {
		t.Run(u.tenant, func(t *testing.T) {
			out, errs := p.psql(t, u.user, u.pass, `
select distinct tenant_id from orders;
select distinct tenant_id from customers;
begin;
savepoint s;
select distinct tenant_id from orders;
rollback to s;
select current_setting('app.current_tenant_id');
commit;
`)
			if errs != "" {
				t.Fatalf("stderr: %s", errs)
			}
			if want := strings.Repeat(u.tenant+"\n", 4); out != want {
				t.Fatalf("got %q, want %q", out, want)
			}
		})
	}

	t.Run("describe", func(t *testing.T) {
		out, errs := p.psql(t, "acme_app", "acme_secret", `\pset tuples_only off
\pset format aligned
\d orders
\dt
\d+ customers
\l
\dn
\df
\dv
`)
		if errs != "" {
			t.Fatalf("stderr: %s", errs)
		}
		// Column widths depend on what else the shared database holds.
		for _, want := range []string{`Table "public\.orders"`, `tenant_isolation`, `public\s+\|\s+customers\s+\|\s+table`, `Table "public\.customers"`, "List of databases"} {
			if !regexp.MustCompile(want).MatchString(out) {
				t.Errorf("output lacks %s:\n%s", want, out)
			}
		}
	})

	t.Run("blocks", func(t *testing.T) {
		out, errs := p.psql(t, "acme_app", "acme_secret", `
select * from audit_raw;
set app.current_tenant_id = 'globex';
selec 1;
select distinct tenant_id from orders;
`)
		for _, want := range []string{
			`ERROR:  42501: pgmoat: relation "public.audit_raw" is not protected by row-level security`,
			`ERROR:  42501: pgmoat: setting "app.current_tenant_id"`,
			`ERROR:  42601: pgmoat: syntax error at or near "selec"`,
		} {
			if !strings.Contains(errs, want) {
				t.Errorf("stderr lacks %q:\n%s", want, errs)
			}
		}
		if out != "acme\n" {
			t.Errorf("after the errors: got %q, want acme", out)
		}
	})
}
