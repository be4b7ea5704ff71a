package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/pgmoat/pgmoat/config"
	"github.com/pgmoat/pgmoat/policy"
	"github.com/pgmoat/pgmoat/proxy"
)

func newExplainCmd() *cobra.Command {
	var (
		catalogFile, dumpFile string
		userName, format      string
	)
	cmd := &cobra.Command{
		Use:   `explain [flags] ["SQL" | -]`,
		Short: "Show the policy's decision for a statement and everything it touches",
		Long: `explain runs the policy on one query text exactly as the proxy would for a
tenant session, and prints:

  - the decision: allowed, or blocked with the reason, SQLSTATE, message, hint
    and position (a 1-based character index, as PostgreSQL reports it) that
    the client would receive;
  - the statements of the text;
  - every relation, function, operator and setting the text touches, how it
    is used (read, write, lock, call, set, ...) and how the policy classifies
    it: protected by row-level security, shared (read-only or writable),
    system catalog (allowed or refused), unprotected (and why), view
    (security_invoker or with its owner's rights, with the relations it reads
    listed "via" the view), sequence owned by a table, temporary table,
    user function (allowed, trusted, SECURITY DEFINER, volatile), ...
    Unlike the proxy, explain does not stop at the first refusal: every
    object is listed with its own verdict.

The text may hold several statements. "-" (or no argument) reads it from
standard input. A text that starts with "-" (a comment) goes after "--":
pgmoat explain -c pgmoat.yaml -- "-- ping".

The rules (protected and shared tables, allowed functions, tenant setting)
come from the configuration file. The catalog (what the database holds) comes
from the upstream database in the configuration (explain connects as pgmoat's
role, like the proxy), or from a JSON snapshot given with --catalog, so that
explain works offline. --dump-catalog FILE writes the live database's
snapshot to FILE ("-" for standard output) in that format; with no SQL
argument, explain then only writes the snapshot.

--user explains for a user of the configuration: a read-only user gets the
read-only refusals, an admin user is never refused. Without it the session is
an ordinary tenant session.

explain exits with status 0 whether the statement is allowed or blocked, and
1 when it cannot decide (bad configuration, unreachable database, unknown
user).`,
		Example: `  # Against the live database from the configuration:
  pgmoat explain --config pgmoat.yaml "SELECT * FROM orders JOIN audit_raw USING (id)"

  # Save a catalog snapshot once, then explain offline (e.g. in CI):
  pgmoat explain --config pgmoat.yaml --dump-catalog catalog.json
  pgmoat explain --config pgmoat.yaml --catalog catalog.json "TRUNCATE orders"

  # As a read-only user, as JSON, with the SQL on standard input:
  echo "SELECT nextval('orders_id_seq')" |
    pgmoat explain -c pgmoat.yaml --catalog catalog.json --user reports --format json -`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if format != "text" && format != "json" {
				return fmt.Errorf("--format %q: want text or json", format)
			}
			if catalogFile != "" && dumpFile != "" {
				return errors.New("--catalog and --dump-catalog exclude each other: --dump-catalog reads the live database")
			}
			cfg, err := config.Load(configPath(cmd), nil)
			if err != nil {
				return err
			}
			sess, err := explainSession(cfg, userName)
			if err != nil {
				return err
			}
			cat, err := explainCatalog(cmd.Context(), cfg, catalogFile)
			if err != nil {
				return err
			}
			if dumpFile != "" {
				if err := dumpCatalog(cat, dumpFile, cmd.OutOrStdout()); err != nil {
					return err
				}
				if len(args) == 0 {
					return nil
				}
			}
			sql, err := explainSQL(args, cmd.InOrStdin())
			if err != nil {
				return err
			}
			e := policy.NewEngine(proxy.PolicyRules(cfg), cat, 0)
			x := e.Explain(sql, sess)
			if format == "json" {
				return writeExplainJSON(cmd.OutOrStdout(), x, sess)
			}
			return writeExplainText(cmd.OutOrStdout(), x, sess)
		},
	}
	fs := cmd.Flags()
	fs.StringP("config", "c", "pgmoat.yaml", "the configuration file (env "+configEnv+")")
	fs.StringVar(&catalogFile, "catalog", "", "read the catalog from this JSON snapshot instead of the upstream database")
	fs.StringVar(&dumpFile, "dump-catalog", "", `write the upstream database's catalog snapshot to this file ("-": standard output)`)
	fs.StringVarP(&userName, "user", "u", "", "explain for this user of the configuration (its read-only and admin flags apply)")
	fs.StringVar(&format, "format", "text", "output format: text or json")
	return cmd
}

// explainSession is the policy session of the configured user name, or a
// plain tenant session when name is empty.
func explainSession(cfg *config.Config, name string) (*policy.Session, error) {
	if name == "" {
		return &policy.Session{}, nil
	}
	for _, u := range cfg.Users {
		if u.Name == name {
			return &policy.Session{Tenant: u.Tenant, User: u.Name, ReadOnly: u.ReadOnly, Admin: u.Admin}, nil
		}
	}
	return nil, fmt.Errorf("--user %q: no such user in the configuration", name)
}

// explainCatalog reads the snapshot file, or loads the catalog from the
// upstream database when file is empty.
func explainCatalog(ctx context.Context, cfg *config.Config, file string) (*policy.Catalog, error) {
	if file != "" {
		f, err := os.Open(file)
		if err != nil {
			return nil, fmt.Errorf("--catalog: %w", err)
		}
		defer f.Close()
		cat, err := policy.ReadCatalogJSON(f)
		if err != nil {
			return nil, fmt.Errorf("--catalog %s: %w", file, err)
		}
		return cat, nil
	}
	connector, err := proxy.NewPgConnector(cfg.Upstream.DSN, cfg.Upstream.Password, cfg.Upstream.ConnectTimeout)
	if err != nil {
		return nil, err
	}
	conn, err := connector.Open(ctx)
	if err != nil {
		return nil, fmt.Errorf("load the catalog (or give a snapshot with --catalog): %w", err)
	}
	defer conn.Close(context.Background())
	cat, err := proxy.LoadCatalog(ctx, conn, cfg.Policy.TenantSetting)
	if err != nil {
		return nil, fmt.Errorf("load the catalog: %w", err)
	}
	return cat, nil
}

// dumpCatalog writes cat as JSON to path, or to stdout for "-".
func dumpCatalog(cat *policy.Catalog, path string, stdout io.Writer) error {
	if path == "-" {
		return cat.WriteJSON(stdout)
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("--dump-catalog: %w", err)
	}
	if err := cat.WriteJSON(f); err != nil {
		f.Close()
		return fmt.Errorf("--dump-catalog %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("--dump-catalog %s: %w", path, err)
	}
	return nil
}

// explainSQL is the SQL argument, or standard input for "-" or none.
func explainSQL(args []string, stdin io.Reader) (string, error) {
	if len(args) == 1 && args[0] != "-" {
		return args[0], nil
	}
	b, err := io.ReadAll(stdin)
	if err != nil {
		return "", fmt.Errorf("read SQL from standard input: %w", err)
	}
	return string(b), nil
}

// sessionLine describes the explained session.
func sessionLine(s *policy.Session) string {
	if s.User == "" {
		return "a tenant session (use --user for a configured user)"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "user %s", s.User)
	switch {
	case s.Admin:
		b.WriteString(", admin (bypasses the policy)")
	case s.ReadOnly:
		fmt.Fprintf(&b, ", tenant %s, read-only", s.Tenant)
	default:
		fmt.Fprintf(&b, ", tenant %s", s.Tenant)
	}
	return b.String()
}

// position converts a violation's byte offset to the 1-based character
// index PostgreSQL reports (0 if unknown).
func position(sql string, pos int) int {
	if pos < 0 || pos > len(sql) {
		return 0
	}
	return utf8.RuneCountInString(sql[:pos]) + 1
}

func writeExplainText(w io.Writer, x *policy.Explanation, s *policy.Session) error {
	var b strings.Builder
	fmt.Fprintf(&b, "session:  %s\n", sessionLine(s))
	if v := x.Violation; v == nil {
		b.WriteString("decision: allowed\n")
	} else {
		fmt.Fprintf(&b, "decision: blocked\n  reason:   %s\n  sqlstate: %s\n  message:  %s\n", v.Reason, v.SQLState, v.Message)
		if v.Hint != "" {
			fmt.Fprintf(&b, "  hint:     %s\n", v.Hint)
		}
		if p := position(x.SQL, v.Pos); p > 0 {
			fmt.Fprintf(&b, "  position: %d (statement %d)\n", p, v.Stmt+1)
			line, col := lineAt(x.SQL, v.Pos)
			fmt.Fprintf(&b, "    %s\n    %s^\n", line, strings.Repeat(" ", col))
		} else if len(x.Statements) > 1 {
			fmt.Fprintf(&b, "  statement: %d\n", v.Stmt+1)
		}
	}
	if len(x.Statements) > 0 {
		b.WriteString("statements:\n")
		for i, st := range x.Statements {
			fmt.Fprintf(&b, "  %d. %s: %s\n", i+1, orDash(st.Command), oneLine(st.Text))
		}
	}
	if len(x.CreatesTemp) > 0 {
		fmt.Fprintf(&b, "creates temporary tables: %s\n", strings.Join(x.CreatesTemp, ", "))
	}
	if len(x.Objects) == 0 {
		b.WriteString("objects:  none\n")
		_, err := io.WriteString(w, b.String())
		return err
	}
	b.WriteString("objects:\n")
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  STMT\tKIND\tNAME\tACCESS\tCLASS\tVERDICT")
	for _, o := range x.Objects {
		name := o.Name
		if o.Via != "" {
			name += " (via " + o.Via + ")"
		}
		verdict := "allowed"
		if !o.Allowed {
			verdict = "refused: " + string(o.Reason)
		}
		fmt.Fprintf(tw, "  %d\t%s\t%s\t%s\t%s\t%s\n", o.Stmt+1, o.Kind, name, o.Access, o.Class, verdict)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// lineAt returns the line of sql holding byte offset pos and the
// character column of pos in it, for a caret under the position.
func lineAt(sql string, pos int) (string, int) {
	start := strings.LastIndexByte(sql[:pos], '\n') + 1
	end := len(sql)
	if i := strings.IndexByte(sql[pos:], '\n'); i >= 0 {
		end = pos + i
	}
	line := strings.ReplaceAll(sql[start:end], "\t", " ")
	return line, utf8.RuneCountInString(sql[start:pos])
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// explainJSON is the --format json document.
type explainJSON struct {
	SQL         string                 `json:"sql"`
	Session     sessionJSON            `json:"session"`
	Decision    string                 `json:"decision"` // allowed or blocked
	Violation   *violationJSON         `json:"violation,omitempty"`
	Statements  []policy.ExplainedStmt `json:"statements"`
	Objects     []policy.Object        `json:"objects"`
	CreatesTemp []string               `json:"creates_temp,omitempty"`
}

type sessionJSON struct {
	User     string `json:"user,omitempty"`
	Tenant   string `json:"tenant,omitempty"`
	ReadOnly bool   `json:"read_only,omitempty"`
	Admin    bool   `json:"admin,omitempty"`
}

type violationJSON struct {
	Reason    policy.Reason `json:"reason"`
	SQLState  string        `json:"sqlstate"`
	Message   string        `json:"message"`
	Hint      string        `json:"hint,omitempty"`
	Object    string        `json:"object,omitempty"`
	Statement int           `json:"statement"`          // 0-based index into statements
	Position  int           `json:"position,omitempty"` // 1-based character index, as PostgreSQL reports it
}

func writeExplainJSON(w io.Writer, x *policy.Explanation, s *policy.Session) error {
	doc := explainJSON{
		SQL:         x.SQL,
		Session:     sessionJSON{User: s.User, Tenant: s.Tenant, ReadOnly: s.ReadOnly, Admin: s.Admin},
		Decision:    "allowed",
		Statements:  x.Statements,
		Objects:     x.Objects,
		CreatesTemp: x.CreatesTemp,
	}
	if v := x.Violation; v != nil {
		doc.Decision = "blocked"
		doc.Violation = &violationJSON{
			Reason: v.Reason, SQLState: v.SQLState, Message: v.Message, Hint: v.Hint,
			Object: v.Object, Statement: v.Stmt, Position: position(x.SQL, v.Pos),
		}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(doc)
}
