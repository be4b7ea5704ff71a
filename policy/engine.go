// Package policy decides whether a tenant may run a query text: it parses
// the text, finds every relation, function, setting and statement kind in
// it, classifies them against a catalog snapshot and the configured rules,
// and returns the statements' boundaries and classes for the rewriter.
//
// The package does no I/O. Everything it knows about the database comes
// from a Catalog built by the caller.
package policy

import (
	"fmt"
	"sort"
	"strings"
	"sync/atomic"
	"unicode/utf8"

	lru "github.com/hashicorp/golang-lru/v2"
)

// maxCachedLen is the longest text whose decision is cached. Longer texts
// are rare (bulk VALUES lists) and would let a client fill the cache with
// large keys.
const maxCachedLen = 16 << 10

// Rules is the configured part of the policy.
type Rules struct {
	// TenantSetting is the name of the setting that carries the tenant,
	// e.g. "app.current_tenant_id" (lowercase).
	TenantSetting string
	// Protected lists tables declared protected, "schema.table" (or "table"
	// for public). A declared table still needs row-level security enabled:
	// without it, it is unprotected and reported by Findings.
	Protected []string
	// Shared maps "schema.table" to whether tenants may write it. Shared
	// tables hold no tenant rows; every tenant may read them.
	Shared map[string]bool
	// Internal lists tables ("schema.table" or "table") that tenants may
	// never use, even when row-level security protects them.
	Internal []string
	// AllowFunctions maps user functions "schema.name" that tenants may call
	// to whether they are trusted; only trusted functions may be SECURITY
	// DEFINER.
	AllowFunctions map[string]bool
}

// Engine decides. It is safe for concurrent use, and immutable after
// NewEngine except for its decision cache.
type Engine struct {
	setting   string
	cat       *Catalog
	protected map[string]bool // declared protected, normalised "schema.name"
	shared    map[string]bool // normalised "schema.name" -> writable
	internal  map[string]bool // normalised "schema.name", refused to tenants
	// operators maps an operator's name (any schema) to the functions
	// operators of that name may call (from Catalog.Operators).
	operators map[string][]string
	allowFn   map[string]bool // normalised "schema.name" -> trusted
	// policySettings are Catalog.PolicySettings (lower case), without the
	// tenant setting.
	policySettings map[string]bool
	findings       []string

	cache        *lru.Cache[string, *entry] // nil when caching is disabled
	hits, misses atomic.Uint64

	// shapes caches, by shapeKey, the class of allowed single-statement
	// texts whose decision consulted no constant: clients that inline
	// their parameters (psycopg2, pgbench -M simple) send a new text every
	// time, but few shapes. nil when caching is disabled.
	shapes *lru.Cache[string, shape]
}

// shape is what the shape cache keeps of a shareable decision.
type shape struct {
	class Class
	// tail is the number of bytes after the statement's end: a trailing
	// semicolon, whitespace, comments. It holds no constant, and
	// pg_query.Normalize copies everything but constants verbatim, so it is
	// the same for every text of the shape.
	tail int
	// ro is what a read-only session is refused (a write), without a
	// position: where the statement's parts fall depends on the constants.
	ro *Violation
}

// entry is the decision for a text of the shape, textLen bytes long.
func (sh shape) entry(textLen int) *entry {
	d := &Decision{Stmts: []Stmt{{Start: 0, End: textLen - sh.tail, Class: sh.class}}}
	return &entry{d: d, ro: sh.ro, constFree: true}
}

// entry is a cached analysis: the shared Decision plus what is needed to
// finish the decision for a given session without allocating.
type entry struct {
	d *Decision
	// ro is the first violation for a read-only session (the earlier of
	// d.Violation and the first read-only violation).
	ro *Violation
	// temps are the names a session must have created as temporary tables,
	// each with the violation to report if it has not (first use only).
	temps []tempRef
	// constFree: the analysis consulted no constant's value.
	constFree bool
}

// shareable reports whether en's decision holds for every text of the same
// shape: allowed (except perhaps for read-only sessions), one statement
// starting the text (what follows it, such as a semicolon, is kept as
// shape.tail), no constant consulted, no temporary table involved.
func (en *entry) shareable(textLen int) bool {
	d := en.d
	return en.constFree && d.Violation == nil && len(en.temps) == 0 &&
		len(d.CreatesTemp) == 0 && len(d.TempQualify) == 0 && len(d.Stmts) == 1 && d.Stmts[0].Start == 0 && d.Stmts[0].End <= textLen
}

type tempRef struct {
	name string
	v    *Violation
}

// NewEngine returns an Engine for the rules and catalog. cat must not be
// modified afterwards. cacheSize is the number of decisions kept; <= 0
// disables the cache.
func NewEngine(r Rules, cat *Catalog, cacheSize int) *Engine {
	if cat == nil {
		cat = &Catalog{}
	}
	e := &Engine{
		setting:   strings.ToLower(r.TenantSetting),
		cat:       cat,
		protected: make(map[string]bool, len(r.Protected)),
		shared:    make(map[string]bool, len(r.Shared)),
		allowFn:   make(map[string]bool, len(r.AllowFunctions)),
		internal:  make(map[string]bool, len(r.Internal)),
		operators: make(map[string][]string, len(cat.Operators)),
	}
	for _, name := range r.Protected {
		e.protected[qualify(name)] = true
	}
	for _, name := range r.Internal {
		e.internal[qualify(name)] = true
	}
	for key, fns := range cat.Operators {
		op := key[strings.LastIndexByte(key, '.')+1:] // operator names have no dots; schema names may
		e.operators[op] = append(e.operators[op], fns...)
	}
	for name, writable := range r.Shared {
		e.shared[qualify(name)] = writable
	}
	for name, trusted := range r.AllowFunctions {
		e.allowFn[qualify(name)] = trusted
	}
	e.policySettings = make(map[string]bool, len(cat.PolicySettings))
	for _, name := range cat.PolicySettings {
		if name = strings.ToLower(name); name != e.setting {
			e.policySettings[name] = true
		}
	}
	if cacheSize > 0 {
		c, err := lru.New[string, *entry](cacheSize)
		if err != nil { // only for a non-positive size
			panic(fmt.Sprintf("policy: lru.New(%d): %v", cacheSize, err))
		}
		e.cache = c
		e.shapes, _ = lru.New[string, shape](cacheSize)
	}
	e.findings = e.computeFindings()
	return e
}

// qualify turns a configured name into "schema.name" (public by default).
func qualify(name string) string {
	name = strings.TrimSpace(name)
	if !strings.Contains(name, ".") {
		return "public." + name
	}
	return name
}

// Check analyses sql (the text of one Query message, or of one Parse
// message) for session s.
//
// The *Decision is cached by text and shared: callers must not modify it.
// The returned *Violation is nil when the text is allowed; it accounts for
// the session (read-only, temporary tables). Admin sessions get the
// Decision (the rewriter needs Stmts) and never a violation.
//
// sql is not retained: the cache keeps its own copy, so sql may alias a
// buffer the caller reuses (and a cache hit does not allocate).
func (e *Engine) Check(sql string, s *Session) (*Decision, *Violation) {
	var en *entry
	if e.cache != nil {
		en, _ = e.cache.Get(sql)
	}
	if en != nil {
		e.hits.Add(1)
	} else {
		e.misses.Add(1)
		var scanned bool
		en, scanned = e.analyzeByShape(sql)
		// A text answered cheaply by its shape is not kept by text too:
		// clients that inline their parameters send each text once, and
		// would push out the texts that are sent again and again.
		if e.cache != nil && !scanned && len(sql) <= maxCachedLen {
			e.cache.Add(strings.Clone(sql), en)
		}
	}
	return en.d, en.violation(s)
}

// Lookup is Check for a text it can answer without parsing: one in the
// decision cache, or a new text of a known shape keyed by scanShape. ok is
// false where Check would parse, which costs tens of microseconds to
// milliseconds: the proxy's event loop hands those texts to a goroutine.
func (e *Engine) Lookup(sql string, s *Session) (d *Decision, v *Violation, ok bool) {
	if e.cache == nil {
		return nil, nil, false
	}
	if en, hit := e.cache.Get(sql); hit {
		e.hits.Add(1)
		return en.d, en.violation(s), true
	}
	if len(sql) > maxCachedLen || strings.IndexByte(sql, 0) >= 0 || !utf8.ValidString(sql) {
		return nil, nil, false // as shapeKey
	}
	key, scanned := scanShape(sql)
	if !scanned {
		return nil, nil, false
	}
	sh, known := e.shapes.Get(key)
	if !known || sh.tail > len(sql) {
		return nil, nil, false
	}
	e.misses.Add(1)
	en := sh.entry(len(sql))
	return en.d, en.violation(s), true
}

// analyzeByShape is analyze, answered from the shape cache when a text of
// the same shape was allowed without consulting its constants. scanned
// reports such an answer found by scanShape's key, which costs little more
// than a lookup by text.
func (e *Engine) analyzeByShape(sql string) (en *entry, scanned bool) {
	if e.shapes == nil || len(sql) > maxCachedLen {
		return e.analyze(sql), false
	}
	key, ok := shapeKey(sql)
	if !ok {
		return e.analyze(sql), false
	}
	// sh.tail <= len(sql) holds for every text of the shape; checked anyway
	// so that End can never precede Start.
	if sh, ok := e.shapes.Get(key); ok && sh.tail <= len(sql) {
		return sh.entry(len(sql)), key[0] == 0 // scanShape's keys begin with NUL
	}
	en = e.analyze(sql)
	if en.shareable(len(sql)) {
		st := en.d.Stmts[0]
		sh := shape{class: st.Class, tail: len(sql) - st.End}
		if en.ro != nil {
			ro := *en.ro
			ro.Pos = -1
			sh.ro = &ro
		}
		e.shapes.Add(key, sh)
	}
	return en, false
}

// violation finishes the decision for a session. It must not allocate: it
// runs on every cache hit.
func (en *entry) violation(s *Session) *Violation {
	if s == nil {
		s = &noSession
	}
	if s.Admin {
		return nil
	}
	v := en.d.Violation
	if s.ReadOnly {
		v = en.ro
	}
	for i := range en.temps {
		t := &en.temps[i]
		if v != nil && v.Stmt <= t.v.Stmt {
			break // temps are in statement order
		}
		if _, ok := s.TempTables[t.name]; !ok {
			v = t.v
			break
		}
	}
	return v
}

// noSession stands in for a nil *Session: a plain tenant session.
var noSession Session

// Findings lists problems found at NewEngine time, one line each, for the
// startup log: declared protected tables that are missing or lack row-level
// security, FORCE or a tenant policy; declared shared or internal tables
// that do not exist; tables with a tenant column that are neither protected
// nor internal.
func (e *Engine) Findings() []string { return e.findings }

// Caching reports whether the engine caches decisions (policy.cache_size
// > 0).
func (e *Engine) Caching() bool { return e.cache != nil }

// CacheStats reports decision cache hits, misses and current entries.
func (e *Engine) CacheStats() (hits, misses uint64, entries int) {
	if e.cache != nil {
		entries = e.cache.Len()
	}
	return e.hits.Load(), e.misses.Load(), entries
}

func (e *Engine) computeFindings() []string {
	var out []string
	for _, key := range sortedKeys(e.protected) {
		rel := e.cat.Relations[key]
		switch {
		case rel == nil:
			out = append(out, fmt.Sprintf("declared protected table %q does not exist", key))
		case !rel.RowSecurity:
			out = append(out, fmt.Sprintf("declared protected table %q does not have row-level security enabled: treated as unprotected", key))
		default:
			if !rel.ForceRowSecurity {
				out = append(out, fmt.Sprintf("declared protected table %q does not FORCE row-level security: its owner bypasses the policies; treated as unprotected", key))
			}
			if !rel.TenantPolicy {
				out = append(out, fmt.Sprintf("declared protected table %q has a permissive policy that pgmoat does not read as keyed on %s (or none): allowed because it is declared", key, e.setting))
			}
		}
	}
	for _, key := range sortedKeys(e.shared) {
		if e.cat.Relations[key] == nil {
			out = append(out, fmt.Sprintf("declared shared table %q does not exist", key))
		}
	}
	for _, key := range sortedKeys(e.internal) {
		rel := e.cat.Relations[key]
		if rel == nil {
			out = append(out, fmt.Sprintf("declared internal table %q does not exist", key))
			continue
		}
		for _, p := range rel.Parents {
			if !e.isInternal(p, e.cat.Relations[p], 0) {
				out = append(out, fmt.Sprintf("declared internal table %q is a partition or child of %q, which is not internal: its rows are readable through %q", key, p, p))
			}
		}
	}
	for _, key := range sortedKeys(e.cat.Relations) {
		rel := e.cat.Relations[key]
		if rel.TenantColumn && (rel.Kind == 'r' || rel.Kind == 'p') && !e.isProtected(key, rel) && !e.internal[key] {
			if _, shared := e.shared[key]; !shared {
				out = append(out, fmt.Sprintf("table %q has a tenant_id column but is not protected by row-level security: tenants cannot use it", key))
			}
		}
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
