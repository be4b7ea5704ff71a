package policy

// Catalog is a snapshot of what the database holds, as the policy needs it.
// It is plain data: the proxy's loader builds it from pg_catalog, tests build
// it by hand. An Engine never modifies it, and nothing else may once it has
// been handed to NewEngine.
type Catalog struct {
	// SearchPath is the effective schema list for unqualified names, in
	// order, e.g. {"pg_catalog", "public"}. The session's temporary schema is
	// not in it: temporary tables are known from Session.TempTables.
	SearchPath []string
	// Relations by "schema.name".
	Relations map[string]*Relation
	// Functions by "schema.name", all overloads merged into one entry.
	Functions map[string]*Function
}

// Relation is one pg_class entry.
type Relation struct {
	Schema, Name string
	// Kind is pg_class.relkind: 'r' table, 'p' partitioned table, 'v' view,
	// 'm' materialized view, 'S' sequence, 'f' foreign table, 'c' composite
	// type, 'i' index, ...
	Kind                          byte
	RowSecurity, ForceRowSecurity bool
	// TenantPolicy: at least one permissive policy applies to pgmoat's role,
	// and every permissive policy that applies to it references the tenant
	// setting.
	TenantPolicy bool
	// TenantColumn: the relation has a column named tenant_id
	// (informational: a table with one but no protection is a finding).
	TenantColumn bool
	// SecurityInvoker: a view created WITH (security_invoker = true), whose
	// base relations are accessed with the caller's rights (so their RLS
	// policies apply to pgmoat's role).
	SecurityInvoker bool
	// DependsOn lists, for views and materialized views, the relations
	// ("schema.name") the view reads.
	DependsOn []string
	// Functions lists, for views, the functions ("schema.name") the view
	// calls; they run whenever the view is read, so they must be allowed
	// like a direct call.
	Functions []string
	// OwnedBy is, for a sequence, the "schema.table" owning it (serial or
	// identity column), if any.
	OwnedBy string
}

// Key returns "schema.name".
func (r *Relation) Key() string { return r.Schema + "." + r.Name }

// Function is one pg_proc name (all overloads merged).
type Function struct {
	Schema, Name string
	// SecurityDefiner: at least one overload runs with its owner's rights.
	SecurityDefiner bool
	// Kind is pg_proc.prokind: 'f' function, 'p' procedure, 'a' aggregate,
	// 'w' window function.
	Kind byte
}

// Key returns "schema.name".
func (f *Function) Key() string { return f.Schema + "." + f.Name }
