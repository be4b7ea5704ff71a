package policy

// Class tells the rewriter how one statement relates to the tenant context.
// It is a bit set so that the classes of statements that may share a name
// (a prepared statement re-parsed with other text) can be merged with |.
type Class uint8

const (
	// NeedsTenant: the statement may read or write data, so it must run in a
	// transaction whose tenant setting is set. Transaction control (BEGIN,
	// COMMIT, ROLLBACK, RELEASE, ROLLBACK TO, SET TRANSACTION), SET, RESET,
	// SHOW, DISCARD ALL and empty statements are the only statements
	// without it. SAVEPOINT has it,
	// so that the tenant is always set outside every savepoint and ROLLBACK TO
	// can never undo it.
	NeedsTenant Class = 1 << iota
	// EndsTxn: after the statement the tenant setting is gone (COMMIT,
	// ROLLBACK, END, ABORT, ... AND CHAIN, PREPARE TRANSACTION, DISCARD ALL,
	// CALL of a procedure that may commit).
	EndsTxn
	// CopyIn: COPY ... FROM STDIN; the client streams CopyData after it.
	CopyIn
	// Prepares: SQL PREPARE, which creates a server prepared statement in
	// the namespace the protocol's Parse uses, behind the rewriter's back:
	// the classes it recorded by statement name are no longer reliable.
	Prepares
	// DropsPrepared: DEALLOCATE ALL, DISCARD ALL, which drop every prepared
	// statement of the session, pgmoat's own included.
	DropsPrepared
)

// ReservedPrefix starts every prepared statement and portal name pgmoat
// uses itself; tenants may not use such names (ReasonReservedName).
const ReservedPrefix = "pgmoat_"

// Unknown is the class of a statement pgmoat has not seen (a prepared
// statement name it does not know): assume the worst.
const Unknown = NeedsTenant | EndsTxn | DropsPrepared

// Stmt is one statement of a query text as the parser split it.
type Stmt struct {
	Start, End int // byte range in the text; End is exclusive
	Class      Class
}

// Reason is the closed set of block reasons; it is a metric label value.
type Reason string

const (
	ReasonParseError          Reason = "parse_error"
	ReasonUnprotectedRelation Reason = "unprotected_relation"
	ReasonUnknownRelation     Reason = "unknown_relation"
	ReasonSharedWrite         Reason = "shared_write"
	ReasonSystemCatalog       Reason = "system_catalog"
	ReasonTenantSetting       Reason = "tenant_setting"
	ReasonSetting             Reason = "setting"
	ReasonRole                Reason = "role"
	ReasonFunction            Reason = "function"
	ReasonDDL                 Reason = "ddl"
	ReasonStatement           Reason = "statement"
	ReasonReadOnly            Reason = "read_only"
	ReasonReservedName        Reason = "reserved_name"
	ReasonProtocol            Reason = "protocol"
)

// Auditable reports whether audit mode may let a violation of this reason
// run (logged and counted). Only reaching a relation the policy does not
// protect is: that is what an application being rolled out needs to find.
// Everything else would let the client change the tenant or weaken RLS
// (settings, roles, functions, DDL, other statements) or blind pgmoat
// (unparsable text, reserved names, protocol), and stays refused.
func (r Reason) Auditable() bool {
	switch r {
	case ReasonUnprotectedRelation, ReasonUnknownRelation, ReasonSharedWrite, ReasonSystemCatalog, ReasonReadOnly:
		return true
	}
	return false
}

// Violation is why a statement is refused. It becomes an ErrorResponse.
type Violation struct {
	Stmt     int    // index into Decision.Stmts of the offending statement
	Reason   Reason // metric label
	Object   string // the relation, function or setting, e.g. "public.audit_raw"
	Message  string // one line, starting with "pgmoat: "
	Hint     string // optional
	SQLState string // 42501, or 42601 for text that does not parse
	Pos      int    // byte offset in the text of the offending token, or -1
}

func (v *Violation) Error() string { return v.Message }

// Decision is the session-independent analysis of one query text. Decisions
// are cached and shared between sessions: never modify one.
type Decision struct {
	Stmts     []Stmt     // every statement, in order; empty for an empty or comment-only text
	Violation *Violation // the first violation, or nil
	// Blocking is the first violation that audit mode refuses too (see
	// Reason.Auditable): Violation itself, a later one, or nil. Audit mode
	// lets the text run up to it.
	Blocking *Violation

	// TempNames are unqualified relation names that are not in the catalog.
	// The text is allowed only if each is a temporary table the session
	// created (Session.TempTables); otherwise it is refused as unknown.
	TempNames []string
	// CreatesTemp are temporary tables the text creates (CREATE TEMP TABLE,
	// CREATE TEMP TABLE AS, SELECT INTO TEMP), to be added to the session.
	CreatesTemp []string
	// TempQualify are the byte offsets in the text, ascending, of every
	// unqualified relation name that the policy allowed only as a temporary
	// table of the session (the uses of TempNames, and of tables created
	// earlier in the text, DROP TABLE included). The rewriter inserts
	// TempPrefix at each, so that the server resolves the name to the
	// session's temporary table or fails (42P01): never to a relation
	// created since pgmoat's catalog snapshot, which the policy has not
	// seen. Offsets in statements from Violation.Stmt on may be missing.
	TempQualify []int
}

// TempPrefix is what the rewriter inserts at a Decision.TempQualify offset
// of text: "pg_temp.", or " pg_temp." where the name follows a character
// that can continue an identifier (FROM"t": without the space the keyword
// and the schema would run together).
func TempPrefix(text string, off int) string {
	if off > 0 {
		switch c := text[off-1]; {
		case c >= 0x80, c == '_', c == '$', '0' <= c && c <= '9', 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z':
			return " pg_temp."
		}
	}
	return "pg_temp."
}

// Session is what the policy needs to know about the client session.
type Session struct {
	Tenant     string
	User       string
	ReadOnly   bool
	Admin      bool                // bypasses the policy; every statement is audited
	TempTables map[string]struct{} // temporary tables this session created
}
