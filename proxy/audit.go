package proxy

import (
	"context"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgmoat/pgmoat/config"
	"github.com/pgmoat/pgmoat/policy"
)

// The audit queries run as pgmoat's upstream role: "the application role" is
// current_user. They leave out system schemas, temporary schemas and objects
// that belong to extensions (which are not the user's to fix).
const (
	userSchema = `n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname !~ '^pg_(toast|temp_|toast_temp_)'`

	userRelation = userSchema + `
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend e
                  WHERE e.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
                    AND e.objid = c.oid AND e.deptype = 'e')`

	auditRoleQuery = `
SELECT current_user, r.rolsuper, r.rolbypassrls, pg_catalog.current_database()
FROM pg_catalog.pg_roles r WHERE r.rolname = current_user`

	// Relations, with their tenant column ($1) if they have one.
	auditRelationsQuery = `
SELECT n.nspname, c.relname, c.relkind::text, pg_catalog.pg_get_userbyid(c.relowner),
       pg_catalog.pg_has_role(current_user, c.relowner, 'USAGE'),
       c.relrowsecurity, c.relforcerowsecurity,
       coalesce(pg_catalog.lower((SELECT o.option_value FROM pg_catalog.pg_options_to_table(c.reloptions) o
               WHERE o.option_name = 'security_invoker')) IN ('true', 'on', 'yes', '1'), false),
       a.attnum IS NOT NULL, coalesce(a.attnotnull, false),
       coalesce(pg_catalog.format_type(a.atttypid, a.atttypmod), ''),
       coalesce(t.typcategory = 'S', false),
       coalesce((SELECT pg_catalog.bool_or(i.indkey[0] = a.attnum) FROM pg_catalog.pg_index i
                 WHERE i.indrelid = c.oid), false)
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_catalog.pg_attribute a
  ON a.attrelid = c.oid AND a.attname = $1 AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
  AND ` + userRelation

	// CHECK constraints involving the tenant column ($1).
	auditChecksQuery = `
SELECT n.nspname, c.relname, pg_catalog.pg_get_constraintdef(co.oid)
FROM pg_catalog.pg_constraint co
JOIN pg_catalog.pg_class c ON c.oid = co.conrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attname = $1 AND NOT a.attisdropped
WHERE co.contype = 'c' AND a.attnum = ANY (co.conkey)
  AND ` + userSchema

	// Policies, and whether each applies to the application role (the same
	// rule as relationsQuery in catalog.go).
	auditPoliciesQuery = `
SELECT n.nspname, c.relname, p.polname, p.polpermissive, p.polcmd::text,
       0 = ANY (p.polroles) OR EXISTS (
         SELECT 1 FROM pg_catalog.unnest(p.polroles) AS r(oid)
         WHERE r.oid <> 0 AND pg_catalog.pg_has_role(current_user, r.oid, 'MEMBER')),
       coalesce(pg_catalog.pg_get_expr(p.polqual, p.polrelid), ''),
       coalesce(pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid), ''),
       ` + policyUsesUserObjects + `
FROM pg_catalog.pg_policy p
JOIN pg_catalog.pg_class c ON c.oid = p.polrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE ` + userSchema + `
ORDER BY n.nspname, c.relname, p.polname`

	auditFunctionsQuery = `
SELECT n.nspname, p.proname, pg_catalog.pg_get_function_identity_arguments(p.oid),
       pg_catalog.pg_get_userbyid(p.proowner), p.prosecdef
FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
WHERE ` + userSchema + `
  AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend e
                  WHERE e.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass
                    AND e.objid = p.oid AND e.deptype = 'e')`
)

// tableKey identifies a table by schema and name. Not "schema.name":
// a."b.c" and "a.b".c would share it, and one would hide the other.
func tableKey(schema, name []byte) string { return string(schema) + "\x00" + string(name) }

// LoadAuditSnapshot reads what `pgmoat check` audits. conn must be
// authenticated as pgmoat's upstream role: the snapshot describes that
// role's view of the database. tenantColumn is the tenant column's name
// ("" for policy.DefaultTenantColumn).
func LoadAuditSnapshot(ctx context.Context, conn *pgconn.PgConn, tenantColumn string) (*policy.AuditSnapshot, error) {
	if tenantColumn == "" {
		tenantColumn = policy.DefaultTenantColumn
	}
	col := [][]byte{[]byte(tenantColumn)}
	snap := &policy.AuditSnapshot{}

	found := false
	err := query(ctx, conn, auditRoleQuery, nil, func(row [][]byte) {
		found = true
		snap.Role = policy.AuditRole{Name: string(row[0]), Superuser: isTrue(row[1]), BypassRLS: isTrue(row[2])}
		snap.Database = string(row[3])
	})
	if err != nil {
		return nil, fmt.Errorf("load the application role: %w", err)
	}
	if !found {
		return nil, fmt.Errorf("load the application role: current_user is not in pg_roles")
	}

	tables := map[string]*policy.AuditTable{}
	views := map[string]*policy.AuditView{}
	var tableOrder, viewOrder []string
	err = query(ctx, conn, auditRelationsQuery, col, func(row [][]byte) {
		schema, name, kind := string(row[0]), string(row[1]), row[2][0]
		if kind == 'v' {
			key := schema + "." + name // as viewDepsQuery names views
			views[key] = &policy.AuditView{Schema: schema, Name: name, Owner: string(row[3]), SecurityInvoker: isTrue(row[7])}
			viewOrder = append(viewOrder, key)
			return
		}
		key := tableKey(row[0], row[1])
		t := &policy.AuditTable{
			Schema: schema, Name: name, Kind: kind, Owner: string(row[3]),
			OwnedByRole: isTrue(row[4]), RowSecurity: isTrue(row[5]), ForceRowSecurity: isTrue(row[6]),
		}
		if isTrue(row[8]) {
			t.Tenant = &policy.AuditColumn{Type: string(row[10]), Textual: isTrue(row[11]), NotNull: isTrue(row[9]), Indexed: isTrue(row[12])}
		}
		tables[key] = t
		tableOrder = append(tableOrder, key)
	})
	if err != nil {
		return nil, fmt.Errorf("load relations: %w", err)
	}
	err = query(ctx, conn, auditChecksQuery, col, func(row [][]byte) {
		if t := tables[tableKey(row[0], row[1])]; t != nil && t.Tenant != nil {
			t.Tenant.Checks = append(t.Tenant.Checks, string(row[2]))
		}
	})
	if err != nil {
		return nil, fmt.Errorf("load check constraints: %w", err)
	}
	err = query(ctx, conn, auditPoliciesQuery, nil, func(row [][]byte) {
		if t := tables[tableKey(row[0], row[1])]; t != nil {
			t.Policies = append(t.Policies, policy.AuditPolicy{
				Name: string(row[2]), Permissive: isTrue(row[3]), Command: row[4][0],
				AppliesToRole: isTrue(row[5]), Using: string(row[6]), WithCheck: string(row[7]), UserObjects: isTrue(row[8]),
			})
		}
	})
	if err != nil {
		return nil, fmt.Errorf("load policies: %w", err)
	}
	// viewDepsQuery (catalog.go) also lists functions ('f'): not needed here.
	err = query(ctx, conn, viewDepsQuery, nil, func(row [][]byte) {
		if v := views[string(row[0])]; v != nil && row[2][0] == 'r' {
			v.DependsOn = append(v.DependsOn, string(row[1]))
		}
	})
	if err != nil {
		return nil, fmt.Errorf("load view dependencies: %w", err)
	}
	err = query(ctx, conn, auditFunctionsQuery, nil, func(row [][]byte) {
		snap.Functions = append(snap.Functions, policy.AuditFunction{
			Schema: string(row[0]), Name: string(row[1]), Args: string(row[2]),
			Owner: string(row[3]), SecurityDefiner: isTrue(row[4]),
		})
	})
	if err != nil {
		return nil, fmt.Errorf("load functions: %w", err)
	}

	for _, k := range tableOrder {
		snap.Tables = append(snap.Tables, *tables[k])
	}
	for _, k := range viewOrder {
		snap.Views = append(snap.Views, *views[k])
	}
	return snap, nil
}

// AuditDatabase audits the database conn is connected to, as the role it is
// authenticated as (pgmoat's upstream role).
func AuditDatabase(ctx context.Context, conn *pgconn.PgConn, opts policy.AuditOptions) ([]policy.Finding, error) {
	snap, err := LoadAuditSnapshot(ctx, conn, opts.TenantColumn)
	if err != nil {
		return nil, err
	}
	return policy.Audit(snap, opts), nil
}

// AuditUpstream opens a connection with c, audits the database and closes
// the connection.
func AuditUpstream(ctx context.Context, c *PgConnector, opts policy.AuditOptions) ([]policy.Finding, error) {
	conn, err := c.Open(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())
	return AuditDatabase(ctx, conn, opts)
}

// AuditOptionsFromConfig returns the audit options the configuration implies:
// its tenant setting, declared protected and shared tables and trusted
// functions; its internal tables are ignored. The tenant column is the
// caller's.
func AuditOptionsFromConfig(cfg *config.Config) policy.AuditOptions {
	opts := policy.AuditOptions{
		TenantSetting: cfg.Policy.TenantSetting,
		Protected:     cfg.Policy.Protected,
		Ignore:        slices.Clone(cfg.Policy.Internal),
	}
	for _, t := range cfg.Policy.Shared {
		opts.Shared = append(opts.Shared, t.Name)
	}
	for _, f := range cfg.Policy.AllowFunctions {
		if f.Trusted {
			opts.TrustedFunctions = append(opts.TrustedFunctions, f.Name)
		}
	}
	return opts
}
