package policy

import (
	"fmt"
	"strings"
)

// access is how a statement uses a relation.
type access uint8

const (
	accessRead  access = iota
	accessWrite        // INSERT/UPDATE/DELETE/MERGE target, COPY FROM, row locks (FOR UPDATE/SHARE)
	accessLock         // LOCK TABLE
)

// Schemas whose relations are system catalogs.
const (
	pgCatalog  = "pg_catalog"
	infoSchema = "information_schema"
)

// allowedCatalogs are the system relations tenants may read: what drivers,
// ORMs and psql's \d commands need. They describe the schema, not other
// tenants' rows or sessions. Everything else in pg_catalog and
// information_schema (statistics, activity, locks, large objects, roles'
// secrets, configuration files, replication) is refused.
var allowedCatalogs = setOf(
	// pg_catalog tables
	"pg_catalog.pg_aggregate", "pg_catalog.pg_am", "pg_catalog.pg_amop", "pg_catalog.pg_amproc",
	"pg_catalog.pg_attrdef", "pg_catalog.pg_attribute", "pg_catalog.pg_auth_members",
	"pg_catalog.pg_cast", "pg_catalog.pg_class", "pg_catalog.pg_collation",
	"pg_catalog.pg_constraint", "pg_catalog.pg_conversion", "pg_catalog.pg_database",
	"pg_catalog.pg_default_acl", "pg_catalog.pg_depend", "pg_catalog.pg_description",
	"pg_catalog.pg_enum", "pg_catalog.pg_event_trigger", "pg_catalog.pg_extension",
	"pg_catalog.pg_foreign_data_wrapper", "pg_catalog.pg_foreign_server",
	"pg_catalog.pg_foreign_table", "pg_catalog.pg_index", "pg_catalog.pg_inherits",
	"pg_catalog.pg_init_privs", "pg_catalog.pg_language", "pg_catalog.pg_namespace",
	"pg_catalog.pg_opclass", "pg_catalog.pg_operator", "pg_catalog.pg_opfamily",
	"pg_catalog.pg_partitioned_table", "pg_catalog.pg_policy", "pg_catalog.pg_proc",
	"pg_catalog.pg_publication", "pg_catalog.pg_publication_namespace", "pg_catalog.pg_publication_rel",
	"pg_catalog.pg_range", "pg_catalog.pg_rewrite", "pg_catalog.pg_sequence",
	"pg_catalog.pg_shdescription", "pg_catalog.pg_statistic_ext", "pg_catalog.pg_tablespace",
	"pg_catalog.pg_transform", "pg_catalog.pg_trigger", "pg_catalog.pg_ts_config",
	"pg_catalog.pg_ts_config_map", "pg_catalog.pg_ts_dict", "pg_catalog.pg_ts_parser",
	"pg_catalog.pg_ts_template", "pg_catalog.pg_type",
	// pg_catalog views
	"pg_catalog.pg_available_extension_versions", "pg_catalog.pg_available_extensions",
	"pg_catalog.pg_cursors", "pg_catalog.pg_indexes", "pg_catalog.pg_matviews",
	"pg_catalog.pg_policies", "pg_catalog.pg_prepared_statements", "pg_catalog.pg_publication_tables",
	"pg_catalog.pg_roles", "pg_catalog.pg_rules", "pg_catalog.pg_sequences",
	"pg_catalog.pg_settings", "pg_catalog.pg_tables", "pg_catalog.pg_timezone_abbrevs",
	"pg_catalog.pg_timezone_names", "pg_catalog.pg_views",
	// information_schema
	"information_schema.applicable_roles", "information_schema.attributes",
	"information_schema.character_sets", "information_schema.check_constraints",
	"information_schema.collations", "information_schema.column_privileges",
	"information_schema.column_udt_usage", "information_schema.columns",
	"information_schema.constraint_column_usage", "information_schema.constraint_table_usage",
	"information_schema.domain_constraints", "information_schema.domains",
	"information_schema.element_types", "information_schema.enabled_roles",
	"information_schema.information_schema_catalog_name", "information_schema.key_column_usage",
	"information_schema.parameters", "information_schema.referential_constraints",
	"information_schema.role_table_grants", "information_schema.routines",
	"information_schema.schemata", "information_schema.sequences",
	"information_schema.table_constraints", "information_schema.table_privileges",
	"information_schema.tables", "information_schema.triggers",
	"information_schema.user_defined_types", "information_schema.view_column_usage",
	"information_schema.view_table_usage", "information_schema.views",
)

func setOf(names ...string) map[string]bool {
	m := make(map[string]bool, len(names))
	for _, n := range names {
		m[n] = true
	}
	return m
}

func isSystemSchema(schema string) bool { return schema == pgCatalog || schema == infoSchema }

// resolveRelation finds the catalog relation an unqualified name denotes:
// the first SearchPath schema that has it. ok is false if none has.
func (e *Engine) resolveRelation(name string) (key string, rel *Relation, ok bool) {
	for _, schema := range e.cat.SearchPath {
		key = schema + "." + name
		if rel, ok = e.cat.Relations[key]; ok {
			return key, rel, true
		}
	}
	return "", nil, false
}

// isProtected reports whether RLS keeps a tenant to its own rows of rel:
// row-level security enabled and forced (else the table's owner, and
// pgmoat's role if it is the owner, bypasses it), and policies pgmoat reads
// as keyed on the tenant (TenantPolicy) or a table the operator declared
// protected, vouching for policies pgmoat cannot read (a function that
// returns the tenant, a citext column).
func (e *Engine) isProtected(key string, rel *Relation) bool {
	if rel == nil || (rel.Kind != 'r' && rel.Kind != 'p') {
		return false
	}
	return rel.RowSecurity && rel.ForceRowSecurity && (rel.TenantPolicy || e.protected[key])
}

// maxViewDepth bounds the recursion through views over views.
const maxViewDepth = 16

// checkRelation decides whether a tenant may use the relation key (rel is
// its catalog entry, nil if the catalog has none) with the given access.
// It returns nil if allowed; the caller fills in Stmt and Pos.
func (e *Engine) checkRelation(key string, rel *Relation, acc access) *Violation {
	return e.checkRelationDepth(key, rel, acc, 0)
}

func (e *Engine) checkRelationDepth(key string, rel *Relation, acc access, depth int) *Violation {
	v := e.relationVerdict(key, rel, acc, depth)
	if v == nil && e.isInternal(key, rel, 0) {
		return newViolation(ReasonUnprotectedRelation, key,
			fmt.Sprintf("pgmoat: relation %q is internal: tenants may not use it", key),
			"it is, or belongs to, a table declared in policy.internal")
	}
	return v
}

// isInternal reports whether the relation key (rel its catalog entry) is
// declared internal, or is a partition or child of one: its rows are the
// internal table's.
func (e *Engine) isInternal(key string, rel *Relation, depth int) bool {
	if e.internal[key] {
		return true
	}
	if rel == nil || len(rel.Parents) == 0 {
		return false
	}
	if depth >= maxViewDepth {
		return true // too deep to tell: refuse
	}
	for _, p := range rel.Parents {
		if e.isInternal(p, e.cat.Relations[p], depth+1) {
			return true
		}
	}
	return false
}

// relationVerdict is checkRelationDepth without policy.internal.
func (e *Engine) relationVerdict(key string, rel *Relation, acc access, depth int) *Violation {
	schema, name, _ := strings.Cut(key, ".")
	switch {
	case isSystemSchema(schema) || strings.HasPrefix(name, "pg_stat_statements"):
		if !allowedCatalogs[key] {
			return newViolation(ReasonSystemCatalog, key,
				fmt.Sprintf("pgmoat: system relation %q is not available to tenants", key),
				"it exposes other sessions, statistics or server internals")
		}
		if acc != accessRead {
			return newViolation(ReasonSystemCatalog, key,
				fmt.Sprintf("pgmoat: system relation %q is read-only", key), "")
		}
		return nil
	}
	if writable, ok := e.shared[key]; ok {
		if acc == accessLock {
			return newViolation(ReasonStatement, key,
				fmt.Sprintf("pgmoat: LOCK of shared relation %q is not allowed: it would block other tenants", key), "")
		}
		if acc == accessWrite && !writable {
			return newViolation(ReasonSharedWrite, key,
				fmt.Sprintf("pgmoat: relation %q is shared between tenants and read-only", key),
				"declare it writable in the shared tables of the configuration")
		}
		return nil
	}
	if rel == nil {
		return newViolation(ReasonUnknownRelation, key,
			fmt.Sprintf("pgmoat: relation %q is not in pgmoat's catalog", key),
			"if it was created after pgmoat started, reload pgmoat")
	}
	if e.isProtected(key, rel) {
		return nil
	}
	if acc == accessLock {
		return newViolation(ReasonStatement, key,
			fmt.Sprintf("pgmoat: LOCK of relation %q is not allowed: it is not protected by row-level security", key), "")
	}
	switch rel.Kind {
	case 'v':
		if !rel.SecurityInvoker {
			return newViolation(ReasonUnprotectedRelation, key,
				fmt.Sprintf("pgmoat: view %q runs with its owner's rights, which bypass row-level security", key),
				"recreate it WITH (security_invoker = true)")
		}
		if depth >= maxViewDepth {
			return newViolation(ReasonUnprotectedRelation, key,
				fmt.Sprintf("pgmoat: view %q nests views too deeply to be checked", key), "")
		}
		for _, dep := range rel.DependsOn {
			if v := e.checkRelationDepth(dep, e.cat.Relations[dep], acc, depth+1); v != nil {
				if v.Reason == ReasonSharedWrite {
					return v
				}
				return newViolation(ReasonUnprotectedRelation, key,
					fmt.Sprintf("pgmoat: view %q reads relation %q, which tenants may not use", key, dep), v.Hint)
			}
		}
		for _, fn := range rel.Functions {
			schema, name, _ := strings.Cut(fn, ".")
			if _, v := e.checkFunction(schema, name); v != nil {
				return newViolation(ReasonUnprotectedRelation, key,
					fmt.Sprintf("pgmoat: view %q calls function %q, which tenants may not call", key, fn), "")
			}
		}
		return nil
	case 'm':
		return newViolation(ReasonUnprotectedRelation, key,
			fmt.Sprintf("pgmoat: materialized view %q holds rows computed without row-level security", key),
			"declare it shared if its rows belong to no tenant")
	case 'S':
		if owner := e.cat.Relations[rel.OwnedBy]; rel.OwnedBy != "" && e.isProtected(rel.OwnedBy, owner) && !e.isInternal(rel.OwnedBy, owner, 0) {
			return nil
		}
		return newViolation(ReasonUnprotectedRelation, key,
			fmt.Sprintf("pgmoat: sequence %q is not owned by a table protected by row-level security", key), "")
	}
	if len(rel.Parents) > 0 {
		// PostgreSQL applies the policies of the table a query names, not
		// those of its parent: a child queried directly has only its own.
		what := "partition"
		if !rel.IsPartition {
			what = "child table"
		}
		return newViolation(ReasonUnprotectedRelation, key,
			fmt.Sprintf("pgmoat: %s %q of %q is not itself protected by row-level security", what, key, rel.Parents[0]),
			fmt.Sprintf("query it through %q (whose policies then apply to its rows), or enable and force row-level security with a policy on %s on it", rel.Parents[0], e.setting))
	}
	return newViolation(ReasonUnprotectedRelation, key,
		fmt.Sprintf("pgmoat: relation %q is not protected by row-level security", key),
		fmt.Sprintf("enable and force row-level security with a policy on %s, or declare it shared", e.setting))
}

// relationClass describes how the policy sees the relation key (rel is its
// catalog entry, nil if none), for pgmoat explain.
func (e *Engine) relationClass(key string, rel *Relation) string {
	schema, name, _ := strings.Cut(key, ".")
	if isSystemSchema(schema) || strings.HasPrefix(name, "pg_stat_statements") {
		if allowedCatalogs[key] {
			return "system catalog, allowed (read-only)"
		}
		return "system catalog, refused"
	}
	if writable, ok := e.shared[key]; ok {
		if writable {
			return "shared, writable"
		}
		return "shared, read-only"
	}
	if e.isInternal(key, rel, 0) {
		return "internal (policy.internal): refused to tenants"
	}
	if rel == nil {
		return "unknown"
	}
	var family string
	switch {
	case len(rel.Parents) > 0 && rel.IsPartition:
		family = ", partition of " + rel.Parents[0]
	case len(rel.Parents) > 0:
		family = ", inherits from " + strings.Join(rel.Parents, ", ")
	}
	if e.isProtected(key, rel) {
		if rel.Kind == 'p' {
			return "protected by row-level security (partitioned: its policies cover every partition)" + family
		}
		return "protected by row-level security" + family
	}
	switch rel.Kind {
	case 'v':
		if rel.SecurityInvoker {
			return "view, security_invoker"
		}
		return "view with its owner's rights (not security_invoker)"
	case 'm':
		return "materialized view"
	case 'S':
		if rel.OwnedBy == "" {
			return "sequence owned by no table"
		}
		if e.isProtected(rel.OwnedBy, e.cat.Relations[rel.OwnedBy]) {
			return "sequence owned by " + rel.OwnedBy + " (protected)"
		}
		return "sequence owned by " + rel.OwnedBy + " (not protected)"
	case 'f':
		return "foreign table, unprotected"
	case 'r', 'p':
		var why string
		switch {
		case !rel.RowSecurity:
			why = "row-level security not enabled"
		case !rel.ForceRowSecurity && !e.protected[key]:
			why = "row-level security not forced"
		default:
			why = "no policy on " + e.setting
		}
		return "unprotected: " + why + family
	}
	return fmt.Sprintf("unprotected (relkind %q)", string(rune(rel.Kind)))
}

// newViolation returns a policy violation (SQLSTATE 42501) with an unknown
// position; the walker sets Stmt and Pos.
func newViolation(reason Reason, object, message, hint string) *Violation {
	return &Violation{Reason: reason, Object: object, Message: message, Hint: hint, SQLState: "42501", Pos: -1}
}
