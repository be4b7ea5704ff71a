package policy

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// Catalog is a snapshot of what the database holds, as the policy needs it.
// It is plain data: the proxy's loader builds it from pg_catalog, tests build
// it by hand, and `pgmoat explain` reads it from a JSON file (the field tags
// below are that file's format). An Engine never modifies it, and nothing
// else may once it has been handed to NewEngine.
type Catalog struct {
	// SearchPath is the effective schema list for unqualified names, in
	// order, e.g. {"pg_catalog", "public"}. The session's temporary schema is
	// not in it: temporary tables are known from Session.TempTables.
	SearchPath []string `json:"search_path"`
	// Relations by "schema.name".
	Relations map[string]*Relation `json:"relations"`
	// Functions by "schema.name", all overloads merged into one entry.
	Functions map[string]*Function `json:"functions"`
	// PolicySettings are the settings (lower case), other than the tenant
	// setting, that some row-level security policy reads with
	// current_setting: a tenant that could change one could change what the
	// policy lets it see, so tenants may not set them.
	PolicySettings []string `json:"policy_settings,omitempty"`
	// Operators maps operators ("schema.op", e.g. "public.===") defined
	// outside the system schemas, and any whose function is SECURITY
	// DEFINER, to the functions ("schema.name") they call. An expression
	// using the name may call any of them (which one depends on the operand
	// types), so each must be one a tenant may call. Operators of
	// extensions are left out unless their function is SECURITY DEFINER:
	// otherwise installing citext would make every "=" suspect.
	Operators map[string][]string `json:"operators,omitempty"`
}

// Relation is one pg_class entry.
type Relation struct {
	Schema string `json:"schema"`
	Name   string `json:"name"`
	// Kind is pg_class.relkind: 'r' table, 'p' partitioned table, 'v' view,
	// 'm' materialized view, 'S' sequence, 'f' foreign table, 'c' composite
	// type, 'i' index, ... In JSON it is the one-letter string.
	Kind             byte `json:"-"`
	RowSecurity      bool `json:"row_security,omitempty"`
	ForceRowSecurity bool `json:"force_row_security,omitempty"`
	// TenantPolicy: at least one permissive policy applies to pgmoat's role,
	// and every permissive policy that applies to it is keyed on the tenant
	// (TenantKey) in each expression PostgreSQL applies.
	TenantPolicy bool `json:"tenant_policy,omitempty"`
	// TenantColumn: the relation has a column named tenant_id
	// (informational: a table with one but no protection is a finding).
	TenantColumn bool `json:"tenant_column,omitempty"`
	// SecurityInvoker: a view created WITH (security_invoker = true), whose
	// base relations are accessed with the caller's rights (so their RLS
	// policies apply to pgmoat's role).
	SecurityInvoker bool `json:"security_invoker,omitempty"`
	// DependsOn lists, for views and materialized views, the relations
	// ("schema.name") the view reads.
	DependsOn []string `json:"depends_on,omitempty"`
	// Functions lists, for views, the functions ("schema.name") the view
	// calls; they run whenever the view is read, so they must be allowed
	// like a direct call.
	Functions []string `json:"functions,omitempty"`
	// OwnedBy is, for a sequence, the "schema.table" owning it (serial or
	// identity column), if any.
	OwnedBy string `json:"owned_by,omitempty"`
	// Parents are the tables ("schema.name") this table inherits from, or
	// the partitioned table it is a partition of (pg_inherits). PostgreSQL
	// applies only the policies of the table a query names: the parent's
	// policies cover the rows of its children when the parent is queried,
	// but a child queried directly is protected only by its own.
	Parents []string `json:"parents,omitempty"`
	// IsPartition: the table is a partition of its one parent
	// (pg_class.relispartition), rather than an inheritance child.
	IsPartition bool `json:"is_partition,omitempty"`
}

// Key returns "schema.name".
func (r *Relation) Key() string { return r.Schema + "." + r.Name }

// relationJSON is Relation with Kind as a one-letter string.
type relationJSON struct {
	Kind string `json:"kind"`
	*relationAlias
}

type relationAlias Relation // no methods: no MarshalJSON recursion

// MarshalJSON writes Kind as its one-letter relkind.
func (r *Relation) MarshalJSON() ([]byte, error) {
	return json.Marshal(relationJSON{Kind: string(rune(r.Kind)), relationAlias: (*relationAlias)(r)})
}

// UnmarshalJSON reads what MarshalJSON writes.
func (r *Relation) UnmarshalJSON(b []byte) error {
	v := relationJSON{relationAlias: (*relationAlias)(r)}
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	k, err := kindByte(v.Kind)
	if err != nil {
		return fmt.Errorf("relation %s.%s: %w", r.Schema, r.Name, err)
	}
	r.Kind = k
	return nil
}

// Function is one pg_proc name (all overloads merged).
type Function struct {
	Schema string `json:"schema"`
	Name   string `json:"name"`
	// SecurityDefiner: at least one overload runs with its owner's rights.
	SecurityDefiner bool `json:"security_definer,omitempty"`
	// Volatile: at least one overload is VOLATILE, so it may write (stable
	// and immutable functions run their queries read-only). Read-only
	// sessions may not call a volatile user function.
	Volatile bool `json:"volatile,omitempty"`
	// Extension: an extension created every overload. Even in pg_catalog it
	// is then a user function: tenants may call it only if the
	// configuration allows. (An extension's overload of a built-in name,
	// such as citext's lower, leaves the name built-in.)
	Extension bool `json:"extension,omitempty"`
	// Kind is pg_proc.prokind: 'f' function, 'p' procedure, 'a' aggregate,
	// 'w' window function. In JSON it is the one-letter string.
	Kind byte `json:"-"`
}

// Key returns "schema.name".
func (f *Function) Key() string { return f.Schema + "." + f.Name }

type functionJSON struct {
	Kind string `json:"kind"`
	*functionAlias
}

type functionAlias Function

// MarshalJSON writes Kind as its one-letter prokind.
func (f *Function) MarshalJSON() ([]byte, error) {
	return json.Marshal(functionJSON{Kind: string(rune(f.Kind)), functionAlias: (*functionAlias)(f)})
}

// UnmarshalJSON reads what MarshalJSON writes.
func (f *Function) UnmarshalJSON(b []byte) error {
	v := functionJSON{functionAlias: (*functionAlias)(f)}
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	k, err := kindByte(v.Kind)
	if err != nil {
		return fmt.Errorf("function %s.%s: %w", f.Schema, f.Name, err)
	}
	f.Kind = k
	return nil
}

func kindByte(s string) (byte, error) {
	if len(s) != 1 || s[0] < '!' || s[0] > '~' {
		return 0, fmt.Errorf("kind %q: want one ASCII letter", s)
	}
	return s[0], nil
}

// WriteJSON writes the catalog as indented JSON, the snapshot format that
// ReadCatalogJSON reads.
func (c *Catalog) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(c)
}

// ReadCatalogJSON reads a snapshot written by WriteJSON. Every map key must
// be its entry's "schema.name": a hand-edited file that disagrees with
// itself is refused rather than guessed at.
func ReadCatalogJSON(r io.Reader) (*Catalog, error) {
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	var c Catalog
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("decode catalog: %w", err)
	}
	for key, rel := range c.Relations {
		if rel == nil || rel.Key() != key {
			return nil, fmt.Errorf("catalog: relation key %q does not match its schema and name", key)
		}
	}
	for key, fn := range c.Functions {
		if fn == nil || fn.Key() != key {
			return nil, fmt.Errorf("catalog: function key %q does not match its schema and name", key)
		}
	}
	for key := range c.Operators {
		if i := strings.LastIndexByte(key, '.'); i <= 0 || i == len(key)-1 {
			return nil, fmt.Errorf("catalog: operator key %q is not schema.operator (a snapshot from an older pgmoat? dump it again)", key)
		}
	}
	if c.Relations == nil {
		c.Relations = map[string]*Relation{}
	}
	if c.Functions == nil {
		c.Functions = map[string]*Function{}
	}
	return &c, nil
}
