package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/pgmoat/pgmoat/config"
	"github.com/pgmoat/pgmoat/policy"
	"github.com/pgmoat/pgmoat/proxy"
)

func newCheckCmd() *cobra.Command {
	var (
		format       string
		fixSQL       bool
		ignore       []string
		tenantColumn string
	)
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Audit the database for what breaks tenant isolation",
		Long: `check connects to the upstream database as pgmoat's role (upstream.dsn) and
reports what breaks tenant isolation:

  error    role_superuser, role_bypassrls: RLS never applies to pgmoat's role
  error    role_owns_table: pgmoat's role owns a tenant table
  error    rls_disabled, rls_not_forced: a tenant table lacks ENABLE or FORCE
           ROW LEVEL SECURITY
  error    no_tenant_policy, policy_not_keyed: no permissive policy for pgmoat's
           role compares the tenant column with policy.tenant_setting, or one
           that applies does not
  error    declared_table_missing: policy.protected or policy.shared names a
           table that does not exist; tenant_column_missing: a declared
           protected table has no tenant column
  error    view_not_security_invoker, for a view that reads a tenant table
           (a warning for other views)
  warning  policy_without_nullif: a policy compares with current_setting(...)
           without NULLIF(..., ''); after a transaction on the connection has
           set the tenant, RESET leaves '' (not NULL), which matches rows whose
           tenant is ''
  warning  policy_without_with_check, tenant_column_nullable,
           tenant_column_no_check (no CHECK (tenant_id <> '')),
           no_tenant_index (no index starts with the tenant column),
           security_definer_function, ignored_object_missing

A tenant table is a table with the tenant column (--tenant-column, default
tenant_id) or one declared in policy.protected. Tables declared in
policy.shared are exempt from the tenant checks. Tables declared in
policy.internal (tenant rows that only admins use, which pgmoat refuses to
tenants, e.g. an audit log) are left out of every check, and so is each
table, view or function (schema.name) given with --ignore. SECURITY DEFINER functions that
policy.allow_functions marks trusted are not reported. System schemas and
objects that belong to extensions are not audited.

Exit status: 0 when no finding has severity error (warnings are printed but
do not fail the check); 1 when any finding is an error or the check could
not run. The status is the same for every output format and with --fix-sql.

--fix-sql prints, instead of the findings, a migration in one transaction
that fixes what can be fixed mechanically (adds the tenant column, the CHECK,
the index, enables and forces RLS, creates or corrects the policies); review
it, then run it as the tables' owner or a superuser. Backfilling a missing or
nullable tenant column is left to you (commented steps); the new CHECK fails,
and the whole migration with it, while rows with an empty tenant exist.
Findings without a mechanical fix are listed in comments at its end.`,
		Example: `  pgmoat check --config /etc/pgmoat/pgmoat.yaml
  pgmoat check -c pgmoat.yaml --format json
  pgmoat check -c pgmoat.yaml --ignore public.audit_raw
  pgmoat check -c pgmoat.yaml --fix-sql > fix.sql`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if format != "table" && format != "json" {
				return fmt.Errorf("--format: must be table or json, not %q", format)
			}
			cfg, err := config.Load(configPath(cmd), nil)
			if err != nil {
				return err
			}
			opts := proxy.AuditOptionsFromConfig(cfg)
			opts.TenantColumn = tenantColumn
			opts.Ignore = append(opts.Ignore, ignore...)
			connector, err := proxy.NewPgConnector(cfg.Upstream.DSN, cfg.Upstream.Password, cfg.Upstream.ConnectTimeout)
			if err != nil {
				return err
			}
			findings, err := proxy.AuditUpstream(cmd.Context(), connector, opts)
			if err != nil {
				return fmt.Errorf("check: %w", err)
			}

			out := cmd.OutOrStdout()
			switch {
			case fixSQL:
				if sql := policy.FixSQL(findings); sql != "" {
					fmt.Fprint(out, sql)
				} else {
					fmt.Fprintln(out, "-- pgmoat check: nothing to fix")
				}
			case format == "json":
				if findings == nil {
					findings = []policy.Finding{} // [] rather than null
				}
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				enc.SetEscapeHTML(false) // keep "<>" in SQL readable
				if err := enc.Encode(findings); err != nil {
					return err
				}
			default:
				printFindings(out, findings)
			}
			if n := countErrors(findings); n > 0 {
				return fmt.Errorf("check: %d finding(s) of severity error", n)
			}
			return nil
		},
	}
	fs := cmd.Flags()
	fs.StringP("config", "c", "pgmoat.yaml", "the configuration file (env "+configEnv+")")
	fs.StringVar(&format, "format", "table", "output format: table or json (an array of findings)")
	fs.BoolVar(&fixSQL, "fix-sql", false, "print a migration that fixes what can be fixed, instead of the findings")
	fs.StringSliceVar(&ignore, "ignore", nil, "a table, view or function (schema.name) to leave out of the audit; repeatable")
	fs.StringVar(&tenantColumn, "tenant-column", policy.DefaultTenantColumn, "the column that holds the tenant")
	return cmd
}

// logAudit audits the upstream database and logs each finding, errors at
// level error and warnings at level warn. run calls it at startup. A failed
// audit is logged, not fatal: the policy engine's own catalog snapshot
// already decides what tenants may reach.
func logAudit(ctx context.Context, connector *proxy.PgConnector, cfg *config.Config, logger *slog.Logger) {
	findings, err := proxy.AuditUpstream(ctx, connector, proxy.AuditOptionsFromConfig(cfg))
	if err != nil {
		logger.Warn("database audit failed", "err", err)
		return
	}
	for _, f := range findings {
		level := slog.LevelWarn
		if f.Severity == policy.SeverityError {
			level = slog.LevelError
		}
		logger.Log(ctx, level, "database audit finding", "code", f.Code, "object", f.Object, "message", f.Message)
	}
	if len(findings) > 0 {
		logger.Info("database audit done; pgmoat check --fix-sql prints the SQL that fixes what it can",
			"errors", countErrors(findings), "warnings", len(findings)-countErrors(findings))
	}
}

// printFindings writes the findings as an aligned table, errors first, and a
// summary line.
func printFindings(w io.Writer, findings []policy.Finding) {
	if len(findings) == 0 {
		fmt.Fprintln(w, "no findings")
		return
	}
	// Errors first; otherwise Audit's order (by object).
	sorted := slices.Clone(findings)
	slices.SortStableFunc(sorted, func(a, b policy.Finding) int {
		return cmp.Compare(severityRank(a.Severity), severityRank(b.Severity))
	})
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SEVERITY\tCODE\tOBJECT\tMESSAGE")
	for _, f := range sorted {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", f.Severity, f.Code, f.Object, f.Message)
	}
	tw.Flush()
	errs := countErrors(findings)
	fmt.Fprintf(w, "\n%s, %s\n", plural(errs, "error"), plural(len(findings)-errs, "warning"))
}

func severityRank(s policy.Severity) int {
	if s == policy.SeverityError {
		return 0
	}
	return 1
}

func countErrors(findings []policy.Finding) int {
	n := 0
	for _, f := range findings {
		if f.Severity == policy.SeverityError {
			n++
		}
	}
	return n
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return fmt.Sprintf("%d %ss", n, word)
}
