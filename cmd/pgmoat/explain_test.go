package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/spf13/cobra"

	"github.com/pgmoat/pgmoat/policy"
)

// testdata/demo_catalog.json is the catalog snapshot of the demo database
// (deploy/demo/schema.sql), written by
//
//	pgmoat explain --config CONFIG --dump-catalog testdata/demo_catalog.json
//
// with CONFIG's upstream pointing at it. The tests below need no database.
const demoCatalog = "testdata/demo_catalog.json"

const explainConfig = `upstream:
  dsn: host=127.0.0.1 port=1 dbname=app user=pgmoat
users:
  - name: acme_app
    password: acme-secret
    tenant: acme
  - name: acme_ro
    password: ro-secret
    tenant: acme
    read_only: true
  - name: dba
    password: dba-secret
    admin: true
policy:
  shared:
    - name: plans
`

// runExplain runs `pgmoat explain` in-process with the test config, the
// demo catalog, stdin and args.
func runExplain(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	clearEnv(t)
	var out, errOut bytes.Buffer
	root := newRootCmd()
	if !hasCommand(root, "explain") { // until main.go registers it
		root.AddCommand(newExplainCmd())
	}
	root.SetArgs(append([]string{"explain", "--config", writeConfig(t, explainConfig)}, args...))
	root.SetIn(strings.NewReader(stdin))
	root.SetOut(&out)
	root.SetErr(&errOut)
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

func hasCommand(root *cobra.Command, name string) bool {
	for _, c := range root.Commands() {
		if c.Name() == name {
			return true
		}
	}
	return false
}

func TestExplainText(t *testing.T) {
	out, err := runExplain(t, "", "--catalog", demoCatalog, "SELECT o.id, p.name FROM orders o JOIN plans p ON true, audit_raw a")
	if err != nil {
		t.Fatal(err)
	}
	want := `session:  a tenant session (use --user for a configured user)
decision: blocked
  reason:   unprotected_relation
  sqlstate: 42501
  message:  pgmoat: relation "public.audit_raw" is not protected by row-level security
  hint:     enable and force row-level security with a policy on app.current_tenant_id, or declare it shared
  position: 57 (statement 1)
    SELECT o.id, p.name FROM orders o JOIN plans p ON true, audit_raw a
                                                            ^
statements:
  1. SELECT: SELECT o.id, p.name FROM orders o JOIN plans p ON true, audit_raw a
objects:
  STMT  KIND      NAME              ACCESS  CLASS                                        VERDICT
  1     relation  public.orders     read    protected by row-level security              allowed
  1     relation  public.plans      read    shared, read-only                            allowed
  1     relation  public.audit_raw  read    unprotected: row-level security not enabled  refused: unprotected_relation
`
	if out != want {
		t.Fatalf("output:\n%s\nwant:\n%s", out, want)
	}
}

func TestExplainTextCases(t *testing.T) {
	tests := []struct {
		name  string
		stdin string
		args  []string
		want  []string // lines (trimmed of surrounding space) the output must contain
	}{
		{"allowed", "", []string{"SELECT * FROM orders WHERE id = $1"},
			[]string{"decision: allowed", "1. SELECT: SELECT * FROM orders WHERE id = $1"}},
		{"sequence of a protected table", "", []string{"SELECT nextval('orders_id_seq')"},
			[]string{"decision: allowed", "sequence owned by public.orders (protected)"}},
		{"several statements, the second refused", "", []string{"BEGIN; SET app.current_tenant_id = 'globex'; COMMIT"},
			[]string{"decision: blocked", "reason:   tenant_setting", "statement: 2", "2. SET: SET app.current_tenant_id = 'globex'", "3. TRANSACTION CONTROL: COMMIT"}},
		{"functions", "", []string{"SELECT pg_terminate_backend(pid), now() FROM pg_stat_activity"},
			[]string{"reason:   function", "built-in, refused", "system catalog, refused"}},
		{"sql from stdin", "TRUNCATE orders\n", []string{"-"},
			[]string{"decision: blocked", "reason:   statement", "message:  pgmoat: TRUNCATE is not allowed: row-level security does not apply to it"}},
		{"read-only user", "", []string{"--user", "acme_ro", "SELECT nextval('orders_id_seq')"},
			[]string{"session:  user acme_ro, tenant acme, read-only", "reason:   read_only"}},
		{"admin user", "", []string{"-u", "dba", "TRUNCATE audit_raw"},
			[]string{"session:  user dba, admin (bypasses the policy)", "decision: allowed"}},
		{"does not parse", "", []string{"SELEC 1"},
			[]string{"reason:   parse_error", "sqlstate: 42601", "1. -: SELEC 1"}},
		{"empty", "", []string{"--", "-- ping"},
			[]string{"decision: allowed", "objects:  none"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := runExplain(t, tt.stdin, append([]string{"--catalog", demoCatalog}, tt.args...)...)
			if err != nil {
				t.Fatal(err)
			}
			lines := map[string]bool{}
			for _, l := range strings.Split(out, "\n") {
				lines[strings.TrimSpace(l)] = true
			}
			for _, w := range tt.want {
				if !lines[w] && !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
		})
	}
}

func TestExplainJSON(t *testing.T) {
	sql := "UPDATE plans SET price = 0 WHERE id IN (SELECT id FROM orders)"
	out, err := runExplain(t, "", "--catalog", demoCatalog, "--format", "json", "--user", "acme_app", sql)
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		SQL     string `json:"sql"`
		Session struct {
			User, Tenant string
		} `json:"session"`
		Decision  string `json:"decision"`
		Violation struct {
			Reason    string `json:"reason"`
			SQLState  string `json:"sqlstate"`
			Object    string `json:"object"`
			Statement int    `json:"statement"`
			Position  int    `json:"position"`
		} `json:"violation"`
		Statements []policy.ExplainedStmt `json:"statements"`
		Objects    []policy.Object        `json:"objects"`
	}
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if got.SQL != sql || got.Session.User != "acme_app" || got.Session.Tenant != "acme" || got.Decision != "blocked" {
		t.Fatalf("header: %+v", got)
	}
	v := got.Violation
	if v.Reason != "shared_write" || v.SQLState != "42501" || v.Object != "public.plans" || v.Statement != 0 || v.Position != 8 {
		t.Fatalf("violation: %+v", v)
	}
	if len(got.Statements) != 1 || got.Statements[0].Command != "UPDATE" {
		t.Fatalf("statements: %+v", got.Statements)
	}
	type obj struct{ name, access, class string }
	var objs []obj
	for _, o := range got.Objects {
		objs = append(objs, obj{o.Name, o.Access, o.Class})
	}
	want := []obj{{"public.plans", "write", "shared, read-only"}, {"public.orders", "read", "protected by row-level security"}}
	if len(objs) != len(want) || objs[0] != want[0] || objs[1] != want[1] {
		t.Fatalf("objects: %+v, want %+v", objs, want)
	}
	if got.Objects[0].Allowed || got.Objects[0].Reason != policy.ReasonSharedWrite || !got.Objects[1].Allowed {
		t.Fatalf("object verdicts: %+v", got.Objects)
	}
}

func TestExplainErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"unknown user", []string{"--catalog", demoCatalog, "--user", "nobody", "SELECT 1"}, `--user "nobody": no such user`},
		{"bad format", []string{"--catalog", demoCatalog, "--format", "yaml", "SELECT 1"}, `--format "yaml"`},
		{"catalog and dump", []string{"--catalog", demoCatalog, "--dump-catalog", "x.json"}, "exclude each other"},
		{"missing catalog", []string{"--catalog", "testdata/nope.json", "SELECT 1"}, "nope.json"},
		{"bad catalog", []string{"--catalog", "explain_test.go", "SELECT 1"}, "decode catalog"},
		{"unreachable upstream", []string{"SELECT 1"}, "--catalog"},
		{"two arguments", []string{"--catalog", demoCatalog, "SELECT 1", "SELECT 2"}, "accepts at most 1 arg"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := runExplain(t, "", tt.args...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestExplainHelp(t *testing.T) {
	out, err := runExplain(t, "", "--help")
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"--catalog", "--dump-catalog", "--user", "--format", "Examples:", "pgmoat explain --config pgmoat.yaml"} {
		if !strings.Contains(out, w) {
			t.Errorf("--help lacks %q", w)
		}
	}
}
