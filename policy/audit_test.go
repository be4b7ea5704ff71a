package policy

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

const (
	keyedExpr   = "(tenant_id = NULLIF(current_setting('app.current_tenant_id'::text, true), ''::text))"
	bareExpr    = "(tenant_id = current_setting('app.current_tenant_id'::text))"
	nonEmptyDef = "CHECK ((tenant_id <> ''::text))"
)

// goodTable is a table protected the way DESIGN.md recommends: no findings.
func goodTable(name string) AuditTable {
	return AuditTable{
		Schema: "public", Name: name, Kind: 'r', Owner: "app_owner",
		RowSecurity: true, ForceRowSecurity: true,
		Tenant: &AuditColumn{Type: "text", Textual: true, NotNull: true, Checks: []string{nonEmptyDef}, Indexed: true},
		Policies: []AuditPolicy{{
			Name: "tenant_isolation", Permissive: true, Command: '*', AppliesToRole: true,
			Using: keyedExpr, WithCheck: keyedExpr,
		}},
	}
}

// snapshot returns a clean database holding the good table "orders", a
// shared table "plans" and a security_invoker view over orders, with tables
// changed by edit.
func snapshot(edit func(*AuditSnapshot)) *AuditSnapshot {
	s := &AuditSnapshot{
		Database: "app",
		Role:     AuditRole{Name: "pgmoat"},
		Tables: []AuditTable{
			goodTable("orders"),
			{Schema: "public", Name: "plans", Kind: 'r', Owner: "app_owner"},
		},
		Views: []AuditView{{Schema: "public", Name: "my_orders", Owner: "app_owner", SecurityInvoker: true, DependsOn: []string{"public.orders"}}},
		Functions: []AuditFunction{
			{Schema: "public", Name: "price", Args: "integer", Owner: "app_owner"},
		},
	}
	if edit != nil {
		edit(s)
	}
	return s
}

// orders returns the snapshot's orders table.
func orders(s *AuditSnapshot) *AuditTable { return &s.Tables[0] }

// brief renders a finding as "severity code object" for comparison.
func brief(fs []Finding) []string {
	out := make([]string, len(fs))
	for i, f := range fs {
		out[i] = fmt.Sprintf("%s %s %s", f.Severity, f.Code, f.Object)
	}
	return out
}

// allCodes lists every finding code; TestAudit must produce each one.
var allCodes = []string{
	CodeRoleSuperuser, CodeRoleBypassRLS, CodeDeclaredMissing, CodeIgnoredMissing,
	CodeTenantColumnMissing, CodeTenantColumnNullable, CodeTenantColumnNoCheck, CodeNoTenantIndex,
	CodeRLSDisabled, CodeRLSNotForced, CodeRoleOwnsTable, CodeNoTenantPolicy, CodePolicyNotKeyed,
	CodePolicyNoWithCheck, CodePolicyNoNullif, CodeViewNotInvoker, CodeSecurityDefiner,
}

func TestAudit(t *testing.T) {
	defaults := AuditOptions{Shared: []string{"plans"}}
	seen := map[string]bool{}
	for _, tc := range []struct {
		name string
		opts *AuditOptions // nil: defaults
		edit func(*AuditSnapshot)
		want []string // brief(findings), in order
		// fixes maps an index into want to substrings its Fix must contain;
		// "" means the finding must have no fix.
		fixes map[int][]string
	}{
		{name: "clean", want: []string{}},
		{
			name: "role superuser and bypassrls",
			edit: func(s *AuditSnapshot) { s.Role.Superuser, s.Role.BypassRLS = true, true },
			want: []string{"error role_superuser pgmoat", "error role_bypassrls pgmoat"},
			fixes: map[int][]string{
				0: {`ALTER ROLE "pgmoat" NOSUPERUSER;`},
				1: {`ALTER ROLE "pgmoat" NOBYPASSRLS;`},
			},
		},
		{
			name: "declared and ignored names that do not exist",
			opts: &AuditOptions{Protected: []string{"billing.invoices", "orders"}, Shared: []string{"plans", "countries"}, Ignore: []string{"public.gone"}},
			want: []string{
				"error declared_table_missing billing.invoices",
				"error declared_table_missing public.countries",
				"warning ignored_object_missing public.gone",
			},
			fixes: map[int][]string{0: {""}, 2: {""}},
		},
		{
			name: "declared protected table without the tenant column",
			opts: &AuditOptions{Protected: []string{"public.events"}, Shared: []string{"plans"}},
			edit: func(s *AuditSnapshot) {
				s.Tables = append(s.Tables, AuditTable{Schema: "public", Name: "events", Kind: 'r', Owner: "app_owner"})
			},
			want: []string{
				"error tenant_column_missing public.events",
				"warning tenant_column_no_check public.events",
				"warning no_tenant_index public.events",
				"error rls_disabled public.events",
				"error no_tenant_policy public.events",
			},
			fixes: map[int][]string{
				0: {`ALTER TABLE "public"."events" ADD COLUMN "tenant_id" text;`, "\n-- ALTER TABLE \"public\".\"events\" ALTER COLUMN \"tenant_id\" SET NOT NULL;"},
				1: {`ALTER TABLE "public"."events" ADD CONSTRAINT "events_tenant_id_not_empty" CHECK ("tenant_id" <> '');`},
				2: {`CREATE INDEX ON "public"."events" ("tenant_id");`},
				3: {`ALTER TABLE "public"."events" ENABLE ROW LEVEL SECURITY;`, `ALTER TABLE "public"."events" FORCE ROW LEVEL SECURITY;`},
				4: {`CREATE POLICY "tenant_isolation" ON "public"."events" FOR ALL`,
					`USING ("tenant_id" = NULLIF(current_setting('app.current_tenant_id', true), ''))`,
					`WITH CHECK ("tenant_id" = NULLIF(current_setting('app.current_tenant_id', true), ''));`},
			},
		},
		{
			name: "tenant column nullable",
			edit: func(s *AuditSnapshot) { orders(s).Tenant.NotNull = false },
			want: []string{"warning tenant_column_nullable public.orders"},
			// Backfilling is manual: the fix is a comment only.
			fixes: map[int][]string{0: {"-- ALTER TABLE \"public\".\"orders\" ALTER COLUMN \"tenant_id\" SET NOT NULL;"}},
		},
		{
			name: "tenant column without a non-empty check",
			edit: func(s *AuditSnapshot) {
				orders(s).Tenant.Checks = []string{"CHECK ((other_tenant_id <> ''::text))", "CHECK ((length(tenant_id) < 64))"}
			},
			want:  []string{"warning tenant_column_no_check public.orders"},
			fixes: map[int][]string{0: {`ADD CONSTRAINT "orders_tenant_id_not_empty" CHECK ("tenant_id" <> '');`}},
		},
		{
			name: "non-empty checks in the forms PostgreSQL prints",
			edit: func(s *AuditSnapshot) {
				s.Tables = append(s.Tables, goodTable("a"), goodTable("b"), goodTable("c"))
				s.Tables[2].Tenant.Checks = []string{"CHECK (((tenant_id)::text <> ''::text))"}                        // varchar
				s.Tables[3].Tenant.Checks = []string{"CHECK (('' <> tenant_id))"}                                      // reversed
				s.Tables[4].Tenant.Checks = []string{"CHECK (((tenant_id <> ''::text) AND (length(tenant_id) < 64)))"} // combined
			},
			want: []string{},
		},
		{
			name: "a uuid tenant column needs no non-empty check",
			edit: func(s *AuditSnapshot) { orders(s).Tenant = &AuditColumn{Type: "uuid", NotNull: true, Indexed: true} },
			want: []string{},
		},
		{
			name:  "no index starts with the tenant column",
			edit:  func(s *AuditSnapshot) { orders(s).Tenant.Indexed = false },
			want:  []string{"warning no_tenant_index public.orders"},
			fixes: map[int][]string{0: {`CREATE INDEX ON "public"."orders" ("tenant_id");`}},
		},
		{
			name:  "rls disabled, already forced",
			edit:  func(s *AuditSnapshot) { orders(s).RowSecurity = false },
			want:  []string{"error rls_disabled public.orders"},
			fixes: map[int][]string{0: {`ALTER TABLE "public"."orders" ENABLE ROW LEVEL SECURITY;`}},
		},
		{
			name:  "rls not forced",
			edit:  func(s *AuditSnapshot) { orders(s).ForceRowSecurity = false },
			want:  []string{"error rls_not_forced public.orders"},
			fixes: map[int][]string{0: {`ALTER TABLE "public"."orders" FORCE ROW LEVEL SECURITY;`}},
		},
		{
			name:  "application role owns a tenant table",
			edit:  func(s *AuditSnapshot) { orders(s).Owner, orders(s).OwnedByRole = "pgmoat", true },
			want:  []string{"error role_owns_table public.orders"},
			fixes: map[int][]string{0: {""}},
		},
		{
			name:  "no policy at all",
			edit:  func(s *AuditSnapshot) { orders(s).Policies = nil },
			want:  []string{"error no_tenant_policy public.orders"},
			fixes: map[int][]string{0: {`CREATE POLICY "tenant_isolation" ON "public"."orders" FOR ALL`}},
		},
		{
			name: "only policies that do not apply: another role's, restrictive",
			edit: func(s *AuditSnapshot) {
				o := orders(s)
				o.Policies[0].AppliesToRole = false
				o.Policies = append(o.Policies, AuditPolicy{Name: "tenant_isolation_2", Command: '*', AppliesToRole: true, Using: keyedExpr})
			},
			want: []string{"error no_tenant_policy public.orders"},
			// The name is free on the table.
			fixes: map[int][]string{0: {`CREATE POLICY "tenant_isolation_3" ON`}},
		},
		{
			name:  "a policy pgmoat cannot read",
			edit:  func(s *AuditSnapshot) { orders(s).Policies[0].UserObjects = true },
			want:  []string{"error no_tenant_policy public.orders", "error policy_not_keyed public.orders"},
			fixes: map[int][]string{1: {""}},
		},
		{
			name:  "a policy pgmoat cannot read on a declared table: trusted, with a warning",
			opts:  &AuditOptions{Protected: []string{"orders"}, Shared: []string{"plans"}},
			edit:  func(s *AuditSnapshot) { orders(s).Policies[0].UserObjects = true },
			want:  []string{"warning policy_not_keyed public.orders"},
			fixes: map[int][]string{0: {""}},
		},
		{
			name: "a wrong policy on a declared table is not trusted",
			opts: &AuditOptions{Protected: []string{"orders"}, Shared: []string{"plans"}},
			edit: func(s *AuditSnapshot) {
				o := orders(s)
				o.Policies[0].UserObjects = true
				o.Policies = append(o.Policies, AuditPolicy{Name: "read_all", Permissive: true, Command: 'r', AppliesToRole: true, Using: "true"})
			},
			want:  []string{"error no_tenant_policy public.orders", "error policy_not_keyed public.orders", "error policy_not_keyed public.orders"},
			fixes: map[int][]string{1: {""}, 2: {""}},
		},
		{
			name: "policies not keyed on the tenant",
			edit: func(s *AuditSnapshot) {
				o := orders(s)
				o.Policies = append(o.Policies,
					AuditPolicy{Name: "read_all", Permissive: true, Command: 'r', AppliesToRole: true, Using: "true"},
					AuditPolicy{Name: "insert_any", Permissive: true, Command: '*', AppliesToRole: true, Using: keyedExpr, WithCheck: "true"},
					AuditPolicy{Name: "other_column", Permissive: true, Command: 'r', AppliesToRole: true,
						Using: "(other_tenant_id = NULLIF(current_setting('app.current_tenant_id'::text, true), ''::text))"},
					// Naming the column and the setting is not enough.
					AuditPolicy{Name: "or_true", Permissive: true, Command: 'r', AppliesToRole: true, Using: "(" + keyedExpr + " OR true)"},
					AuditPolicy{Name: "not_equal", Permissive: true, Command: 'r', AppliesToRole: true,
						Using: "(tenant_id <> NULLIF(current_setting('app.current_tenant_id'::text, true), ''::text))"},
					// The text reads right, but "=" or current_setting is a user's.
					AuditPolicy{Name: "user_operator", Permissive: true, Command: 'r', AppliesToRole: true, Using: keyedExpr, UserObjects: true},
					// Does not apply to the application role: not reported.
					AuditPolicy{Name: "admins", Permissive: true, Command: '*', AppliesToRole: false, Using: "true"},
				)
			},
			want: []string{
				"error policy_not_keyed public.orders",
				"error policy_not_keyed public.orders",
				"error policy_not_keyed public.orders",
				"error policy_not_keyed public.orders",
				"error policy_not_keyed public.orders",
				"error policy_not_keyed public.orders",
			},
			fixes: map[int][]string{0: {""}, 1: {""}, 2: {""}, 3: {""}, 4: {""}, 5: {""}},
		},
		{
			name: "policies without WITH CHECK",
			edit: func(s *AuditSnapshot) {
				o := orders(s)
				o.Policies[0].WithCheck = ""
				o.Policies = append(o.Policies,
					AuditPolicy{Name: "ins", Permissive: true, Command: 'a', AppliesToRole: true},
					// SELECT and DELETE policies have no WITH CHECK.
					AuditPolicy{Name: "sel", Permissive: true, Command: 'r', AppliesToRole: true, Using: keyedExpr},
				)
			},
			want: []string{
				"warning policy_without_with_check public.orders",
				"warning policy_without_with_check public.orders",
			},
			fixes: map[int][]string{
				0: {`ALTER POLICY "tenant_isolation" ON "public"."orders" WITH CHECK (` + keyedExpr + `);`},
				1: {""},
			},
		},
		{
			name: "policy without NULLIF",
			edit: func(s *AuditSnapshot) {
				o := orders(s)
				o.Policies[0].Using, o.Policies[0].WithCheck = bareExpr, ""
			},
			want: []string{
				"warning policy_without_with_check public.orders",
				"warning policy_without_nullif public.orders",
			},
			fixes: map[int][]string{
				// Both fixes use the NULLIF form.
				0: {`ALTER POLICY "tenant_isolation" ON "public"."orders" WITH CHECK ((tenant_id = NULLIF(current_setting('app.current_tenant_id', true), '')));`},
				1: {`ALTER POLICY "tenant_isolation" ON "public"."orders" USING ((tenant_id = NULLIF(current_setting('app.current_tenant_id', true), '')));`},
			},
		},
		{
			name: "NULLIF does not matter for a uuid column",
			edit: func(s *AuditSnapshot) {
				o := orders(s)
				o.Tenant = &AuditColumn{Type: "uuid", NotNull: true, Indexed: true}
				e := "(tenant_id = (current_setting('app.current_tenant_id'::text, true))::uuid)"
				o.Policies[0].Using, o.Policies[0].WithCheck = e, e
			},
			want: []string{},
		},
		{
			name: "views that are not security_invoker",
			edit: func(s *AuditSnapshot) {
				s.Views = append(s.Views,
					AuditView{Schema: "public", Name: "all_orders", Owner: "app_owner", DependsOn: []string{"public.orders"}},
					AuditView{Schema: "public", Name: "nested", Owner: "app_owner", DependsOn: []string{"public.plans", "public.my_orders"}},
					AuditView{Schema: "public", Name: "plan_names", Owner: "app_owner", DependsOn: []string{"public.plans"}},
					AuditView{Schema: "public", Name: "skipped", Owner: "app_owner", DependsOn: []string{"public.orders"}},
				)
			},
			opts: &AuditOptions{Shared: []string{"plans"}, Ignore: []string{"public.skipped"}},
			want: []string{
				"error view_not_security_invoker public.all_orders",
				"error view_not_security_invoker public.nested",
				"warning view_not_security_invoker public.plan_names",
			},
			fixes: map[int][]string{
				0: {`ALTER VIEW "public"."all_orders" SET (security_invoker = true);`},
				2: {`ALTER VIEW "public"."plan_names" SET (security_invoker = true);`},
			},
		},
		{
			name: "security definer functions",
			edit: func(s *AuditSnapshot) {
				s.Functions = append(s.Functions,
					AuditFunction{Schema: "public", Name: "refund", Args: "bigint, numeric", Owner: "app_owner", SecurityDefiner: true},
					AuditFunction{Schema: "billing", Name: "total", Owner: "app_owner", SecurityDefiner: true},
					AuditFunction{Schema: "public", Name: "skipped", Owner: "app_owner", SecurityDefiner: true},
				)
			},
			opts:  &AuditOptions{Shared: []string{"plans"}, Ignore: []string{"skipped"}, TrustedFunctions: []string{"billing.total"}},
			want:  []string{"warning security_definer_function public.refund(bigint, numeric)"},
			fixes: map[int][]string{0: {""}},
		},
		{
			name: "shared and ignored tables are exempt; other kinds are not tenant tables",
			edit: func(s *AuditSnapshot) {
				plans := &s.Tables[1]
				plans.Tenant = &AuditColumn{Type: "text", Textual: true}
				s.Tables = append(s.Tables,
					AuditTable{Schema: "public", Name: "audit_raw", Kind: 'r', Owner: "app_owner", Tenant: &AuditColumn{Type: "text", Textual: true}},
					AuditTable{Schema: "public", Name: "order_totals", Kind: 'm', Owner: "app_owner", Tenant: &AuditColumn{Type: "text", Textual: true}},
				)
			},
			opts: &AuditOptions{Shared: []string{"plans"}, Ignore: []string{"public.audit_raw"}},
			want: []string{},
		},
		{
			name: "custom tenant column and setting",
			opts: &AuditOptions{TenantColumn: "Org", TenantSetting: "App.Org"},
			edit: func(s *AuditSnapshot) {
				s.Tables = s.Tables[:1]
				s.Tables[0].Tenant = &AuditColumn{Type: "uuid", NotNull: true, Indexed: true}
				// The policy compares another column with the setting.
			},
			want: []string{"error no_tenant_policy public.orders", "error policy_not_keyed public.orders"},
			fixes: map[int][]string{0: {
				`USING ("Org" = (NULLIF(current_setting('app.org', true), ''))::uuid)`,
			}},
		},
		{
			name: "identifiers are quoted",
			edit: func(s *AuditSnapshot) {
				t := goodTable(`Order"s`)
				t.Schema, t.ForceRowSecurity = "My Schema", false
				s.Tables = append(s.Tables, t)
			},
			want:  []string{`error rls_not_forced My Schema.Order"s`},
			fixes: map[int][]string{0: {`ALTER TABLE "My Schema"."Order""s" FORCE ROW LEVEL SECURITY;`}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := defaults
			if tc.opts != nil {
				opts = *tc.opts
			}
			got := Audit(snapshot(tc.edit), opts)
			for _, f := range got {
				seen[f.Code] = true
			}
			if b := brief(got); !slices.Equal(b, tc.want) {
				t.Fatalf("findings:\n  %s\nwant:\n  %s", strings.Join(b, "\n  "), strings.Join(tc.want, "\n  "))
			}
			for i, f := range got {
				if f.Message == "" {
					t.Errorf("finding %d (%s) has no message", i, f.Code)
				}
				for _, want := range tc.fixes[i] {
					if (want == "" && f.Fix != "") || !strings.Contains(f.Fix, want) {
						t.Errorf("finding %d (%s) fix:\n%s\nwant it to contain %q", i, f.Code, f.Fix, want)
					}
				}
			}
		})
	}
	for _, c := range allCodes {
		if !seen[c] {
			t.Errorf("no case produces code %q", c)
		}
	}
}

func TestFixSQL(t *testing.T) {
	t.Run("nothing to fix", func(t *testing.T) {
		if got := FixSQL(nil); got != "" {
			t.Errorf("FixSQL(nil) = %q, want empty", got)
		}
		only := []Finding{{Severity: SeverityError, Code: CodeRoleOwnsTable, Object: "public.orders", Message: "m"}}
		if got := FixSQL(only); got != "" {
			t.Errorf("FixSQL without fixes = %q, want empty", got)
		}
	})
	t.Run("one transaction, fixes in order, the rest listed", func(t *testing.T) {
		s := snapshot(func(s *AuditSnapshot) {
			s.Tables = append(s.Tables, AuditTable{
				Schema: "public", Name: "events", Kind: 'r', Owner: "pgmoat", OwnedByRole: true,
				Tenant: &AuditColumn{Type: "text", Textual: true},
			})
		})
		sql := FixSQL(Audit(s, AuditOptions{Shared: []string{"plans"}}))
		order := []string{
			"BEGIN;\n",
			"-- public.events: tenant_column_nullable (warning)\n-- After giving every row a tenant:",
			`ADD CONSTRAINT "events_tenant_id_not_empty"`,
			`CREATE INDEX ON "public"."events" ("tenant_id");`,
			`ALTER TABLE "public"."events" ENABLE ROW LEVEL SECURITY;`,
			`ALTER TABLE "public"."events" FORCE ROW LEVEL SECURITY;`,
			`CREATE POLICY "tenant_isolation" ON "public"."events"`,
			"\nCOMMIT;\n",
			"-- Not fixed automatically:\n--   error role_owns_table public.events: the application role pgmoat owns",
		}
		rest := sql
		for _, w := range order {
			i := strings.Index(rest, w)
			if i < 0 {
				t.Fatalf("migration lacks %q after the previous parts:\n%s", w, sql)
			}
			rest = rest[i+len(w):]
		}
		if strings.Count(sql, "BEGIN;") != 1 || strings.Count(sql, "COMMIT;") != 1 {
			t.Errorf("want exactly one transaction:\n%s", sql)
		}
		// Everything outside the transaction is a comment.
		for line := range strings.Lines(sql[strings.Index(sql, "COMMIT;")+len("COMMIT;"):]) {
			if l := strings.TrimSpace(line); l != "" && !strings.HasPrefix(l, "--") {
				t.Errorf("statement after COMMIT: %q", line)
			}
		}
	})
}

// TestFixSQLCommentsStayComments: text from the database (a policy
// expression, a quoted identifier) may hold line breaks; in the migration's
// comments they must not end the comment and become SQL.
func TestFixSQLCommentsStayComments(t *testing.T) {
	evil := "x\nALTER ROLE owner SUPERUSER; --"
	out := FixSQL([]Finding{
		{Severity: SeverityError, Code: CodePolicyNotKeyed, Object: "public.t", Message: "policy uses " + evil},
		{Severity: SeverityError, Code: CodeRLSDisabled, Object: "public." + evil, Fix: "ALTER TABLE x ENABLE ROW LEVEL SECURITY;"},
	})
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "ALTER ROLE") {
			t.Fatalf("a comment's text became SQL:\n%s", out)
		}
	}
}
