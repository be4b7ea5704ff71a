package policy

// Explanation is what `pgmoat explain` prints: the decision for one text and
// session, and every object the text touches with how the policy classifies
// it. It comes from the same walk as Check (Engine.Explain runs the analysis
// with tracing on), so it cannot disagree with the decision the proxy makes.
type Explanation struct {
	SQL string `json:"sql"`
	// Violation is what Check returns for the session: nil if allowed.
	Violation *Violation `json:"-"`
	// Statements of the text, in order.
	Statements []ExplainedStmt `json:"statements"`
	// Objects are the relations, functions, settings and operators the
	// text names, in the order the walk meets them (statement by statement),
	// with their classification. Unlike Check, the walk does not stop at the
	// first violation, so every object is listed.
	Objects []Object `json:"objects"`
	// CreatesTemp are the temporary tables the text creates.
	CreatesTemp []string `json:"creates_temp,omitempty"`
}

// ExplainedStmt is one statement of an explained text.
type ExplainedStmt struct {
	Text    string `json:"text"`
	Command string `json:"command"` // e.g. "SELECT", "SET", "CREATE TABLE"
}

// Object kinds.
const (
	ObjectRelation = "relation"
	ObjectFunction = "function"
	ObjectSetting  = "setting"
	ObjectOperator = "operator"
)

// Object is one relation, function, setting or operator a text touches.
type Object struct {
	Stmt int    `json:"stmt"` // index into Explanation.Statements
	Kind string `json:"kind"` // ObjectRelation, ObjectFunction, ...
	// Name as resolved: "schema.name" for relations and functions that
	// resolve, "pg_temp.name" for temporary tables, the name as written
	// otherwise (a WITH query, an unknown unqualified function).
	Name string `json:"name"`
	// Access is how the text uses it: read, write, lock, call, set, reset,
	// create, drop, nextval, currval, regclass (a name cast to regclass,
	// which only looks the name up).
	Access string `json:"access"`
	// Class is the policy's classification, e.g. "protected by row-level
	// security", "shared, read-only", "system catalog, refused", "view,
	// security_invoker", "sequence owned by public.orders (protected)",
	// "user function, allowed".
	Class string `json:"class"`
	// Via is the view through which the object is reached, if any.
	Via string `json:"via,omitempty"`
	// Allowed reports whether this use of the object is allowed on its own
	// to a tenant session (with the explained session's temporary tables;
	// the read-only and admin flags only change Explanation.Violation).
	Allowed bool   `json:"allowed"`
	Reason  Reason `json:"reason,omitempty"`
	Message string `json:"message,omitempty"`
	Hint    string `json:"hint,omitempty"`
	Pos     int    `json:"pos"` // byte offset in the text, or -1

	temp string // the temporary table name the session must have, if any
}

// Explain analyses sql for session s like Check, without the cache, and
// reports everything the analysis found. Its Violation is the one Check
// returns for the same text and session.
func (e *Engine) Explain(sql string, s *Session) *Explanation {
	x := &Explanation{SQL: sql, Statements: []ExplainedStmt{}, Objects: []Object{}}
	en := e.analyzeWith(sql, x)
	x.Violation = en.violation(s)
	x.CreatesTemp = en.d.CreatesTemp
	if s == nil {
		s = &noSession
	}
	for i := range x.Objects {
		o := &x.Objects[i]
		if o.temp == "" {
			continue
		}
		if _, exists := s.TempTables[o.temp]; exists {
			o.Allowed, o.Reason, o.Message, o.Hint = true, "", "", ""
			o.Class = "temporary table of this session"
		}
	}
	return x
}

// String names an access for Object.Access.
func (a access) String() string {
	switch a {
	case accessWrite:
		return "write"
	case accessLock:
		return "lock"
	}
	return "read"
}

// accessFromString is the inverse of access.String, for the accesses that
// reach views (nextval and currval read).
func accessFromString(s string) access {
	switch s {
	case "write":
		return accessWrite
	case "lock":
		return accessLock
	}
	return accessRead
}

// setVerdict fills in the verdict fields of o from v (nil: allowed).
func (o *Object) setVerdict(v *Violation) {
	o.Allowed = v == nil
	if v != nil {
		o.Reason, o.Message, o.Hint = v.Reason, v.Message, v.Hint
	}
}
