package policy

// The database audit behind `pgmoat check`: what in the database breaks
// tenant isolation, and the SQL that fixes what can be fixed mechanically.
// Like the rest of the package it does no I/O: the caller loads an
// AuditSnapshot (proxy.LoadAuditSnapshot) and hands it to Audit.

import (
	"fmt"
	"regexp"
	"sort"
	"strings"
)

// Severity grades a Finding. Only errors make `pgmoat check` fail.
type Severity string

const (
	// SeverityError: tenants' rows can leak, or pgmoat will refuse a table
	// the configuration expects to be usable.
	SeverityError Severity = "error"
	// SeverityWarning: isolation holds today, but a safety net is missing
	// or something depends on details pgmoat cannot see.
	SeverityWarning Severity = "warning"
)

// Finding codes. They are stable: CI scripts and documentation refer to them.
const (
	CodeRoleSuperuser        = "role_superuser"            // error: the application role is a superuser
	CodeRoleBypassRLS        = "role_bypassrls"            // error: the application role has BYPASSRLS
	CodeDeclaredMissing      = "declared_table_missing"    // error: policy.protected/shared names a missing table
	CodeIgnoredMissing       = "ignored_object_missing"    // warning: an ignored name matches nothing
	CodeTenantColumnMissing  = "tenant_column_missing"     // error: a declared protected table has no tenant column
	CodeTenantColumnNullable = "tenant_column_nullable"    // warning
	CodeTenantColumnNoCheck  = "tenant_column_no_check"    // warning: no CHECK (tenant <> '')
	CodeNoTenantIndex        = "no_tenant_index"           // warning: no index starts with the tenant column
	CodeRLSDisabled          = "rls_disabled"              // error
	CodeRLSNotForced         = "rls_not_forced"            // error
	CodeRoleOwnsTable        = "role_owns_table"           // error: the application role owns a tenant table
	CodeNoTenantPolicy       = "no_tenant_policy"          // error: no permissive policy keyed on the setting
	CodePolicyNotKeyed       = "policy_not_keyed"          // error: a permissive policy ignores the tenant
	CodePolicyNoWithCheck    = "policy_without_with_check" // warning
	CodePolicyNoNullif       = "policy_without_nullif"     // warning
	CodeViewNotInvoker       = "view_not_security_invoker" // error if it reads tenant tables, else warning
	CodeSecurityDefiner      = "security_definer_function" // warning
)

// Finding is one problem Audit found.
type Finding struct {
	Severity Severity `json:"severity"`
	Code     string   `json:"code"`
	// Object is what the finding is about: "schema.table", "schema.view",
	// "schema.function(argument types)" or a role name.
	Object  string `json:"object"`
	Message string `json:"message"`
	// Fix is SQL (one or more statements, possibly with "--" comments for
	// steps that need a human) that fixes the finding, or "" when no
	// mechanical fix exists. FixSQL assembles the fixes in order.
	Fix string `json:"fix,omitempty"`
}

// DefaultTenantColumn is the tenant column's name when AuditOptions does not
// give one.
const DefaultTenantColumn = "tenant_id"

// DefaultTenantSetting is the setting the RLS policies read when
// AuditOptions does not give one.
const DefaultTenantSetting = "app.current_tenant_id"

// AuditOptions is the configured part of the audit. Table names are
// "schema.table", or "table" for schema public.
type AuditOptions struct {
	TenantColumn  string // default DefaultTenantColumn
	TenantSetting string // default DefaultTenantSetting; compared in lower case
	// Protected tables must exist and be protected even without a tenant
	// column; Shared tables must exist and are exempt from the tenant checks.
	Protected, Shared []string
	// Ignore lists tables, views and functions ("schema.name", all
	// overloads) that are intentionally outside tenant isolation: nothing is
	// reported about them.
	Ignore []string
	// TrustedFunctions are SECURITY DEFINER functions the configuration
	// trusts (policy.allow_functions with trusted: true); they are not
	// reported.
	TrustedFunctions []string
}

// AuditSnapshot is what the audit knows about one database, as seen by the
// application role (pgmoat's upstream role). It is plain data; objects in
// system schemas and objects that belong to extensions are left out.
type AuditSnapshot struct {
	Database string
	Role     AuditRole
	// Tables holds every relation that is not a view: tables, partitioned
	// tables, partitions, foreign tables, materialized views.
	Tables    []AuditTable
	Views     []AuditView
	Functions []AuditFunction
}

// AuditRole is the application role's attributes.
type AuditRole struct {
	Name                 string
	Superuser, BypassRLS bool
}

// AuditTable is one relation that is not a view.
type AuditTable struct {
	Schema, Name string
	// Kind is pg_class.relkind; only 'r' and 'p' can have row-level
	// security, the others are audited only for existence.
	Kind  byte
	Owner string
	// OwnedByRole: the application role is the owner or has its privileges
	// (pg_has_role(..., 'USAGE')). PostgreSQL exempts the owner from RLS
	// unless it is forced, and lets it disable RLS or drop the policies.
	OwnedByRole                   bool
	RowSecurity, ForceRowSecurity bool
	Tenant                        *AuditColumn // nil when the table has no tenant column
	// Policies are all the table's RLS policies.
	Policies []AuditPolicy
}

// Key returns "schema.name".
func (t *AuditTable) Key() string { return t.Schema + "." + t.Name }

// AuditColumn describes a table's tenant column.
type AuditColumn struct {
	Type string // format_type, e.g. "text", "uuid"
	// Textual: a string type (pg_type.typcategory 'S'), which can hold ''.
	Textual bool
	NotNull bool
	// Checks are the definitions (pg_get_constraintdef) of the CHECK
	// constraints that involve the column.
	Checks []string
	// Indexed: some index's first key column is the tenant column.
	Indexed bool
}

// AuditPolicy is one row-level security policy.
type AuditPolicy struct {
	Name       string
	Permissive bool
	// Command is pg_policy.polcmd: '*' ALL, 'r' SELECT, 'a' INSERT,
	// 'w' UPDATE, 'd' DELETE.
	Command byte
	// AppliesToRole: the policy is for PUBLIC or a role the application
	// role is a member of.
	AppliesToRole bool
	// Using and WithCheck are the expressions as pg_get_expr prints them,
	// "" when absent.
	Using, WithCheck string
	// UserObjects: the policy uses an operator, function, type or collation
	// that is not built in, or a column with a nondeterministic collation,
	// so its text may not mean what it says (TenantKey).
	UserObjects bool
}

// AuditView is one view.
type AuditView struct {
	Schema, Name string
	Owner        string
	// SecurityInvoker: created WITH (security_invoker = true), so the base
	// tables' policies apply to the caller rather than the owner.
	SecurityInvoker bool
	// DependsOn lists the relations ("schema.name") the view reads directly.
	DependsOn []string
}

// Key returns "schema.name".
func (v *AuditView) Key() string { return v.Schema + "." + v.Name }

// AuditFunction is one function or procedure overload.
type AuditFunction struct {
	Schema, Name string
	Args         string // pg_get_function_identity_arguments, e.g. "integer, text"
	Owner        string
	// SecurityDefiner: it runs with its owner's rights.
	SecurityDefiner bool
}

// Audit reports what in snap breaks tenant isolation. Findings come in a
// stable order: the role, declared names, then tables, views and functions
// by name; for one table, in the order their fixes must run (FixSQL relies
// on it).
//
// A tenant table is a table ('r' or 'p') that has the tenant column or is
// declared protected, and is neither declared shared nor ignored. For each
// one Audit checks the column (NOT NULL, a CHECK that it is not the empty
// string for string types, an index starting with it), row-level security
// (enabled, forced, not owned by the role) and the permissive policies that
// apply to the role (at least one, each of their expressions comparing the
// column with the tenant setting, WITH CHECK stated, the setting wrapped in
// NULLIF so that an empty setting matches nothing).
// Policies are judged by their text: an expression that reads the setting
// through a wrapper function counts as not keyed.
func Audit(snap *AuditSnapshot, opts AuditOptions) []Finding {
	a := newAuditor(snap, opts)
	a.role()
	a.declared()
	tables := make([]*AuditTable, len(snap.Tables))
	for i := range snap.Tables {
		tables[i] = &snap.Tables[i]
	}
	sort.Slice(tables, func(i, j int) bool { return tables[i].Key() < tables[j].Key() })
	for _, t := range tables {
		a.table(t)
	}
	views := make([]*AuditView, len(snap.Views))
	for i := range snap.Views {
		views[i] = &snap.Views[i]
	}
	sort.Slice(views, func(i, j int) bool { return views[i].Key() < views[j].Key() })
	for _, v := range views {
		a.view(v)
	}
	funcs := make([]*AuditFunction, len(snap.Functions))
	for i := range snap.Functions {
		funcs[i] = &snap.Functions[i]
	}
	sort.Slice(funcs, func(i, j int) bool { return funcObject(funcs[i]) < funcObject(funcs[j]) })
	for _, f := range funcs {
		a.function(f)
	}
	return a.out
}

// FixSQL returns a migration that applies every finding's Fix in one
// transaction, in the findings' order (Audit's order is the one that works),
// and lists the findings without a mechanical fix in comments at the end.
// It returns "" when no finding has a fix. The migration is meant to be
// reviewed, then run as the tables' owner or a superuser.
func FixSQL(findings []Finding) string {
	// Object names and messages quote the database (a policy expression, a
	// quoted identifier) and may hold line breaks: in a comment, a line
	// break would turn the rest into SQL that runs with the migrator's
	// rights. oneLine keeps them inside their comment.
	var b, manual strings.Builder
	for _, f := range findings {
		if f.Fix == "" {
			fmt.Fprintf(&manual, "--   %s %s %s: %s\n", f.Severity, f.Code, oneLine(f.Object), oneLine(f.Message))
			continue
		}
		fmt.Fprintf(&b, "\n-- %s: %s (%s)\n%s\n", oneLine(f.Object), f.Code, f.Severity, f.Fix)
	}
	if b.Len() == 0 {
		return ""
	}
	var out strings.Builder
	out.WriteString(`-- Generated by pgmoat check --fix-sql. Review it before running it as the
-- tables' owner or a superuser, e.g.: psql -v ON_ERROR_STOP=1 -f fix.sql
-- Steps that need a human (backfilling the tenant column) are comments.
-- CREATE INDEX locks the table against writes while it builds; for a big
-- table run it separately with CONCURRENTLY instead.
BEGIN;
`)
	out.WriteString(b.String())
	out.WriteString("\nCOMMIT;\n")
	if manual.Len() > 0 {
		out.WriteString("\n-- Not fixed automatically:\n")
		out.WriteString(manual.String())
	}
	return out.String()
}

// castRE matches a cast as pg_get_constraintdef prints it.
var castRE = regexp.MustCompile(`::("[^"]*"|character varying|[a-z_][a-z0-9_]*)(\[\])?`)

// auditor holds the normalised options and collects findings.
type auditor struct {
	snap      *AuditSnapshot
	column    string
	setting   string
	protected map[string]bool
	shared    map[string]bool
	ignore    map[string]bool
	trusted   map[string]bool
	tenantRel map[string]bool // tables holding tenant rows (for views)
	out       []Finding

	checkRE   *regexp.Regexp // "column <> ''" in a normalised CHECK definition
	settingRE *regexp.Regexp // a current_setting call on the tenant setting, maybe inside NULLIF
}

func newAuditor(snap *AuditSnapshot, opts AuditOptions) *auditor {
	a := &auditor{
		snap:      snap,
		column:    opts.TenantColumn,
		setting:   strings.ToLower(opts.TenantSetting),
		protected: qualifiedSet(opts.Protected),
		shared:    qualifiedSet(opts.Shared),
		ignore:    qualifiedSet(opts.Ignore),
		trusted:   qualifiedSet(opts.TrustedFunctions),
		tenantRel: map[string]bool{},
	}
	if a.column == "" {
		a.column = DefaultTenantColumn
	}
	if a.setting == "" {
		a.setting = DefaultTenantSetting
	}
	col := regexp.QuoteMeta(strings.ToLower(a.column))
	word := `("` + col + `"|` + col + `)`
	a.checkRE = regexp.MustCompile(`(^|[^a-z0-9_$"])` + word + ` (<>|!=) ''|'' (<>|!=) ` + word + `($|[^a-z0-9_$"])`)
	a.settingRE = regexp.MustCompile(`(?i)(nullif\(\s*)?current_setting\(\s*'` + regexp.QuoteMeta(a.setting) +
		`'(::text)?\s*(,\s*(true|false)\s*)?\)`)
	for i := range snap.Tables {
		t := &snap.Tables[i]
		if a.isTenantTable(t) || t.RowSecurity {
			a.tenantRel[t.Key()] = true
		}
	}
	return a
}

func (a *auditor) add(sev Severity, code, object, fix, format string, args ...any) {
	a.out = append(a.out, Finding{Severity: sev, Code: code, Object: object, Message: fmt.Sprintf(format, args...), Fix: fix})
}

func (a *auditor) role() {
	r := a.snap.Role
	if r.Superuser {
		a.add(SeverityError, CodeRoleSuperuser, r.Name, "ALTER ROLE "+quoteIdent(r.Name)+" NOSUPERUSER;",
			"the application role %s is a superuser: row-level security never applies to it", r.Name)
	}
	if r.BypassRLS {
		a.add(SeverityError, CodeRoleBypassRLS, r.Name, "ALTER ROLE "+quoteIdent(r.Name)+" NOBYPASSRLS;",
			"the application role %s has BYPASSRLS: row-level security never applies to it", r.Name)
	}
}

// declared reports configured names that match nothing.
func (a *auditor) declared() {
	relations, known := map[string]bool{}, map[string]bool{}
	for _, t := range a.snap.Tables {
		relations[t.Key()], known[t.Key()] = true, true
	}
	for _, v := range a.snap.Views {
		relations[v.Key()], known[v.Key()] = true, true
	}
	for _, f := range a.snap.Functions {
		known[f.Schema+"."+f.Name] = true
	}
	for _, set := range []struct {
		names map[string]bool
		what  string
	}{{a.protected, "protected"}, {a.shared, "shared"}} {
		for _, key := range sortedKeys(set.names) {
			if !relations[key] {
				a.add(SeverityError, CodeDeclaredMissing, key, "",
					"policy.%s declares %s, which does not exist (or is in a system schema or an extension)", set.what, key)
			}
		}
	}
	for _, key := range sortedKeys(a.ignore) {
		if !known[key] {
			a.add(SeverityWarning, CodeIgnoredMissing, key, "", "%s is ignored but does not exist", key)
		}
	}
}

// isTenantTable: a table that must be protected.
func (a *auditor) isTenantTable(t *AuditTable) bool {
	key := t.Key()
	if (t.Kind != 'r' && t.Kind != 'p') || a.shared[key] || a.ignore[key] {
		return false
	}
	return t.Tenant != nil || a.protected[key]
}

func (a *auditor) table(t *AuditTable) {
	if !a.isTenantTable(t) {
		return
	}
	key, qt, col := t.Key(), quoteIdent(t.Schema)+"."+quoteIdent(t.Name), quoteIdent(a.column)

	// The column. A missing one is added by the fix, so the later checks
	// see it as the fix leaves it: text, nullable until backfilled.
	c := t.Tenant
	if c == nil {
		a.add(SeverityError, CodeTenantColumnMissing, key,
			fmt.Sprintf("ALTER TABLE %s ADD COLUMN %s text;\n-- Backfill it, then make it required:\n-- UPDATE %s SET %s = ...;\n-- ALTER TABLE %s ALTER COLUMN %s SET NOT NULL;",
				qt, col, oneLine(qt), oneLine(col), oneLine(qt), oneLine(col)), // comments: one line each
			"%s is declared protected but has no %s column", key, a.column)
		c = &AuditColumn{Type: "text", Textual: true, NotNull: true}
	}
	if !c.NotNull {
		a.add(SeverityWarning, CodeTenantColumnNullable, key,
			fmt.Sprintf("-- After giving every row a tenant:\n-- ALTER TABLE %s ALTER COLUMN %s SET NOT NULL;", oneLine(qt), oneLine(col)),
			"%s.%s is nullable: a row without a tenant belongs to nobody and is invisible to every tenant", key, a.column)
	}
	if c.Textual && !a.hasNonEmptyCheck(c) {
		a.add(SeverityWarning, CodeTenantColumnNoCheck, key,
			fmt.Sprintf("ALTER TABLE %s ADD CONSTRAINT %s CHECK (%s <> '');", qt, quoteIdent(t.Name+"_"+a.column+"_not_empty"), col),
			"%s.%s has no CHECK (%s <> ''): on a connection where a transaction has set the tenant, the setting reads '' afterwards, and a policy without NULLIF then matches rows with an empty tenant", key, a.column, a.column)
	}
	if !c.Indexed {
		a.add(SeverityWarning, CodeNoTenantIndex, key, fmt.Sprintf("CREATE INDEX ON %s (%s);", qt, col),
			"no index on %s starts with %s: every tenant's query filters on it", key, a.column)
	}

	// Row-level security.
	switch {
	case !t.RowSecurity:
		fix := fmt.Sprintf("ALTER TABLE %s ENABLE ROW LEVEL SECURITY;", qt)
		if !t.ForceRowSecurity {
			fix += fmt.Sprintf("\nALTER TABLE %s FORCE ROW LEVEL SECURITY;", qt)
		}
		a.add(SeverityError, CodeRLSDisabled, key, fix,
			"%s holds tenant rows but row-level security is not enabled: the application role reads every tenant's rows (pgmoat refuses the table)", key)
	case !t.ForceRowSecurity:
		a.add(SeverityError, CodeRLSNotForced, key, fmt.Sprintf("ALTER TABLE %s FORCE ROW LEVEL SECURITY;", qt),
			"%s does not FORCE row-level security: its owner (%s) and roles with its privileges bypass the policies", key, t.Owner)
	}
	if t.OwnedByRole {
		a.add(SeverityError, CodeRoleOwnsTable, key, "",
			"the application role %s owns %s (owner %s): it can disable row-level security or drop the policies; give the table to another role",
			a.snap.Role.Name, key, t.Owner)
	}

	// Policies.
	keyed := false
	for i := range t.Policies {
		p := &t.Policies[i]
		if p.Permissive && p.AppliesToRole && a.policyKeyed(p) {
			keyed = true
		}
	}
	if !keyed && !a.vouched(t) {
		expr := a.tenantExpr(c)
		a.add(SeverityError, CodeNoTenantPolicy, key,
			fmt.Sprintf("CREATE POLICY %s ON %s FOR ALL\n    USING (%s)\n    WITH CHECK (%s);", quoteIdent(a.policyName(t)), qt, expr, expr),
			"%s has no permissive policy for the application role that compares %s with %s", key, a.column, a.setting)
	}
	for i := range t.Policies {
		if p := &t.Policies[i]; p.Permissive && p.AppliesToRole {
			a.policy(t, p, c)
		}
	}
}

// hasNonEmptyCheck reports whether a CHECK constraint says that the column
// is not the empty string, as "<>" or "!=" against an empty literal on either
// side (casts and parentheses aside).
func (a *auditor) hasNonEmptyCheck(c *AuditColumn) bool {
	for _, def := range c.Checks {
		d := castRE.ReplaceAllString(strings.ToLower(def), "")
		d = strings.Join(strings.Fields(strings.NewReplacer("(", " ", ")", " ").Replace(d)), " ")
		if a.checkRE.MatchString(d) {
			return true
		}
	}
	return false
}

// exprKeyed: the expression admits only rows whose tenant column equals
// the setting (TenantKey).
func (a *auditor) exprKeyed(expr string) bool {
	col, ok := TenantKey(expr, a.setting)
	return ok && col == a.column
}

// vouched: t is declared in policy.protected and every permissive policy
// for the application role (one at least) is keyed or unreadable (user
// objects), none plainly wrong: pgmoat trusts such a table's policies.
func (a *auditor) vouched(t *AuditTable) bool {
	if !a.protected[t.Key()] {
		return false
	}
	n := 0
	for i := range t.Policies {
		if p := &t.Policies[i]; p.Permissive && p.AppliesToRole {
			if !p.UserObjects && !a.policyKeyed(p) {
				return false
			}
			n++
		}
	}
	return n > 0
}

// policyKeyed: the policy has an expression and each of them is keyed.
func (a *auditor) policyKeyed(p *AuditPolicy) bool {
	if p.Using == "" && p.WithCheck == "" || p.UserObjects {
		return false
	}
	return (p.Using == "" || a.exprKeyed(p.Using)) && (p.WithCheck == "" || a.exprKeyed(p.WithCheck))
}

func (a *auditor) policy(t *AuditTable, p *AuditPolicy, c *AuditColumn) {
	key, qt := t.Key(), quoteIdent(t.Schema)+"."+quoteIdent(t.Name)
	alter := fmt.Sprintf("ALTER POLICY %s ON %s", quoteIdent(p.Name), qt)

	if p.Using == "" && p.WithCheck == "" {
		// PostgreSQL grants nothing through such a policy: harmless, but
		// for INSERT, UPDATE or ALL surely not what was meant.
		if p.Command == '*' || p.Command == 'w' || p.Command == 'a' {
			a.add(SeverityWarning, CodePolicyNoWithCheck, key, "",
				"policy %s on %s has neither USING nor WITH CHECK, so it allows nothing", p.Name, key)
		}
		return
	}
	if p.UserObjects {
		sev, then := SeverityError, "use the built-in = and current_setting on a deterministic column, or declare the table in policy.protected"
		if a.vouched(t) {
			sev, then = SeverityWarning, "the table is declared in policy.protected, so pgmoat trusts its policies: make sure they keep each tenant to its rows"
		}
		a.add(sev, CodePolicyNotKeyed, key, "",
			"policy %s on %s uses an operator, function, type or collation that is not PostgreSQL's own, or a column with a nondeterministic collation, so its text (%s) may not mean what it says: pgmoat cannot tell that it compares %s with %s exactly; %s",
			p.Name, key, strings.TrimSpace(p.Using+" "+p.WithCheck), a.column, a.setting, then)
		return
	}
	var bad []string
	if p.Using != "" && !a.exprKeyed(p.Using) {
		bad = append(bad, "USING "+p.Using)
	}
	if p.WithCheck != "" && !a.exprKeyed(p.WithCheck) {
		bad = append(bad, "WITH CHECK "+p.WithCheck)
	}
	if len(bad) > 0 {
		a.add(SeverityError, CodePolicyNotKeyed, key, "",
			"policy %s on %s applies to the application role but does not compare %s with %s (%s): permissive policies are OR-ed, so it opens rows to every tenant; drop it or add the tenant condition",
			p.Name, key, a.column, a.setting, strings.Join(bad, "; "))
	}

	// The expressions with the setting wrapped in NULLIF, where it is not.
	using, usingBare := a.withNullif(p.Using)
	check, checkBare := a.withNullif(p.WithCheck)
	if p.WithCheck == "" && (p.Command == '*' || p.Command == 'w' || p.Command == 'a') {
		if p.Using != "" {
			a.add(SeverityWarning, CodePolicyNoWithCheck, key, fmt.Sprintf("%s WITH CHECK (%s);", alter, using),
				"policy %s on %s has no WITH CHECK: PostgreSQL checks new rows with its USING expression; state it explicitly", p.Name, key)
		}
	}
	if c.Textual && (usingBare || checkBare) {
		var set []string
		if usingBare {
			set = append(set, "USING ("+using+")")
		}
		if checkBare {
			set = append(set, "WITH CHECK ("+check+")")
		}
		a.add(SeverityWarning, CodePolicyNoNullif, key, alter+" "+strings.Join(set, " ")+";",
			"policy %s on %s compares with current_setting('%s') without NULLIF(..., ''): once a transaction on the connection has set it, the setting reads '' instead of NULL after it ends, and rows whose %s is '' match",
			p.Name, key, a.setting, a.column)
	}
}

// withNullif returns expr with every current_setting call on the tenant
// setting that is not already inside NULLIF wrapped in one (see tenantExpr),
// and whether there was any.
func (a *auditor) withNullif(expr string) (string, bool) {
	bare := false
	out := a.settingRE.ReplaceAllStringFunc(expr, func(m string) string {
		if strings.HasPrefix(strings.ToLower(m), "nullif") {
			return m
		}
		bare = true
		return fmt.Sprintf("NULLIF(current_setting(%s, true), '')", quoteLiteral(a.setting))
	})
	return out, bare
}

// tenantExpr is the recommended policy expression for column c.
func (a *auditor) tenantExpr(c *AuditColumn) string {
	e := fmt.Sprintf("%s = NULLIF(current_setting(%s, true), '')", quoteIdent(a.column), quoteLiteral(a.setting))
	if !c.Textual && c.Type != "" {
		// Compare in the column's type: uuid = text does not resolve.
		e = fmt.Sprintf("%s = (NULLIF(current_setting(%s, true), ''))::%s", quoteIdent(a.column), quoteLiteral(a.setting), c.Type)
	}
	return e
}

// policyName returns a policy name the table does not use yet.
func (a *auditor) policyName(t *AuditTable) string {
	used := map[string]bool{}
	for _, p := range t.Policies {
		used[p.Name] = true
	}
	name := "tenant_isolation"
	for i := 2; used[name]; i++ {
		name = fmt.Sprintf("tenant_isolation_%d", i)
	}
	return name
}

func (a *auditor) view(v *AuditView) {
	key := v.Key()
	if v.SecurityInvoker || a.ignore[key] {
		return
	}
	fix := fmt.Sprintf("ALTER VIEW %s.%s SET (security_invoker = true);", quoteIdent(v.Schema), quoteIdent(v.Name))
	if reads := a.viewReadsTenant(key, map[string]bool{}); reads != "" {
		a.add(SeverityError, CodeViewNotInvoker, key, fix,
			"view %s reads the tenant table %s with its owner's (%s) rights instead of the caller's, so the policies are not checked against the application role; pgmoat refuses it",
			key, reads, v.Owner)
		return
	}
	a.add(SeverityWarning, CodeViewNotInvoker, key, fix,
		"view %s is not security_invoker: it reads its tables with its owner's (%s) rights; pgmoat refuses it", key, v.Owner)
}

// viewReadsTenant returns a tenant table that the view reads, through other
// views too, or "".
func (a *auditor) viewReadsTenant(key string, seen map[string]bool) string {
	if seen[key] {
		return ""
	}
	seen[key] = true
	for _, v := range a.snap.Views {
		if v.Key() != key {
			continue
		}
		for _, dep := range v.DependsOn {
			if a.tenantRel[dep] {
				return dep
			}
			if r := a.viewReadsTenant(dep, seen); r != "" {
				return r
			}
		}
	}
	return ""
}

func (a *auditor) function(f *AuditFunction) {
	key := f.Schema + "." + f.Name
	if !f.SecurityDefiner || a.ignore[key] || a.trusted[key] {
		return
	}
	a.add(SeverityWarning, CodeSecurityDefiner, funcObject(f), "",
		"%s is SECURITY DEFINER: it runs with its owner's (%s) rights, and row-level security is checked against the owner, not the tenant; pgmoat refuses it unless policy.allow_functions trusts it",
		funcObject(f), f.Owner)
}

func funcObject(f *AuditFunction) string { return f.Schema + "." + f.Name + "(" + f.Args + ")" }

// qualifiedSet makes "table" into "public.table".
func qualifiedSet(names []string) map[string]bool {
	m := make(map[string]bool, len(names))
	for _, n := range names {
		if !strings.Contains(n, ".") {
			n = "public." + n
		}
		m[n] = true
	}
	return m
}

// quoteIdent quotes an identifier for SQL. It always quotes: that is never
// wrong, whatever the case or keyword status of the name.
func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

// quoteLiteral quotes a string literal (standard_conforming_strings on).
func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// oneLine replaces line breaks (and other control characters) with spaces,
// for text written into an SQL comment.
func oneLine(s string) string {
	return strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f || r == '\u2028' || r == '\u2029' {
			return ' '
		}
		return r
	}, s)
}
