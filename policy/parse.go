package policy

// This is the only file that imports pg_query: the parser's version is a
// one-line change here. It turns a parse tree into calls to the name-based
// rules of relations.go, functions.go and settings.go.

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	pg_query "github.com/pganalyze/pg_query_go/v5"
	pgparser "github.com/pganalyze/pg_query_go/v5/parser"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// analyze parses sql and decides it for every kind of session.
func (e *Engine) analyze(sql string) *entry { return e.analyzeWith(sql, nil) }

// analyzeWith is analyze, recording what it finds in x if x is not nil
// (for Explain). With x the walk goes on after the first violation, so
// that every object is listed; the decision is the same.
func (e *Engine) analyzeWith(sql string, x *Explanation) *entry {
	var tree *pg_query.ParseResult
	var err error
	if i := strings.IndexByte(sql, 0); i >= 0 {
		// The parser stops at a NUL, so it would not see what follows.
		// (The protocol cannot carry one inside a text; refuse it anyway.)
		err = &pgparser.Error{Message: "the query text contains a NUL byte", Cursorpos: utf8.RuneCountInString(sql[:i]) + 1}
	} else {
		tree, err = pg_query.Parse(sql)
	}
	if err != nil {
		en := parseErrorEntry(sql, err)
		if x != nil {
			x.Statements = append(x.Statements, ExplainedStmt{Text: sql})
		}
		return en
	}
	d := &Decision{Stmts: make([]Stmt, len(tree.Stmts))}
	for i, raw := range tree.Stmts {
		start := int(raw.StmtLocation)
		end := len(sql)
		if raw.StmtLen > 0 {
			end = start + int(raw.StmtLen)
		}
		d.Stmts[i] = Stmt{Start: start, End: end, Class: classOf(raw.Stmt)}
		if x != nil {
			x.Statements = append(x.Statements, ExplainedStmt{Text: sql[start:end], Command: commandOf(raw.Stmt)})
		}
	}

	a := &analysis{e: e, x: x, sql: sql, created: map[string]bool{}, tempSeen: map[string]bool{}}
	for i, raw := range tree.Stmts {
		a.stmt = i
		a.start, a.end = d.Stmts[i].Start, d.Stmts[i].End
		a.checkStmt(raw.Stmt, 0)
		if a.block == nil || x != nil {
			a.walk(raw.Stmt)
		}
		if a.block != nil && x == nil {
			break // later statements never run, not even in audit mode
		}
		if a.v != nil {
			// Audit mode may run the rest: look for what it refuses
			// too (and list it when explaining), but record nothing
			// as created.
			continue
		}
		for _, name := range a.pending {
			if !a.created[name] {
				a.created[name] = true
				d.CreatesTemp = append(d.CreatesTemp, name)
			}
		}
		a.pending = a.pending[:0]
	}

	d.Violation, d.Blocking = a.v, a.block
	if len(a.qualify) > 0 {
		// The walk visits fields in protobuf order, not text order.
		slices.Sort(a.qualify)
		d.TempQualify = a.qualify
	}
	en := &entry{d: d, ro: a.v, temps: a.temps, constFree: !a.constUsed}
	if a.ro != nil && (a.v == nil || a.ro.Stmt < a.v.Stmt) {
		en.ro = a.ro
	}
	for _, t := range a.temps {
		d.TempNames = append(d.TempNames, t.name)
	}
	return en
}

// shapeKey returns a key that texts differing only in their constants
// share: scanShape's, or else sql with its constants replaced by parameter
// references. It is much cheaper than a parse (no parse tree crosses from
// C). ok is false if sql does not normalise.
func shapeKey(sql string) (key string, ok bool) {
	// A text the full parse refuses must be refused whatever its shape:
	// invalid UTF-8 in a constant normalises away but fails the parse.
	if strings.IndexByte(sql, 0) >= 0 || !utf8.ValidString(sql) {
		return "", false
	}
	if key, ok := scanShape(sql); ok {
		return key, true
	}
	key, err := pg_query.Normalize(sql)
	return key, err == nil
}

// parseErrorEntry refuses text that does not parse (42601). The Decision
// has one Stmt covering the whole text, of Unknown class, so that an admin
// session can still send it and let the server report the error.
func parseErrorEntry(sql string, err error) *entry {
	msg, pos := err.Error(), -1
	var perr *pgparser.Error
	if errors.As(err, &perr) {
		msg = perr.Message
		pos = byteOffset(sql, perr.Cursorpos)
	}
	// The parser quotes the text near the error, which may hold line
	// breaks; a Violation's message is one line.
	msg = strings.Join(strings.Fields(msg), " ")
	v := &Violation{
		Reason:   ReasonParseError,
		Message:  "pgmoat: " + msg,
		SQLState: "42601",
		Pos:      pos,
	}
	d := &Decision{Stmts: []Stmt{{Start: 0, End: len(sql), Class: Unknown}}, Violation: v}
	return &entry{d: d, ro: v}
}

// byteOffset converts the parser's cursor position (a 1-based character
// index, 0 if unknown) to a byte offset in sql, or -1.
func byteOffset(sql string, cursor int) int {
	if cursor <= 0 {
		return -1
	}
	chars := 0
	for i := range sql {
		chars++
		if chars == cursor {
			return i
		}
	}
	if chars+1 == cursor {
		return len(sql) // at end of input
	}
	return -1
}

// classOf tells the rewriter how a top-level statement relates to the
// tenant context (see Class).
func classOf(n *pg_query.Node) Class {
	switch s := n.GetNode().(type) {
	case *pg_query.Node_TransactionStmt:
		switch s.TransactionStmt.Kind {
		case pg_query.TransactionStmtKind_TRANS_STMT_BEGIN,
			pg_query.TransactionStmtKind_TRANS_STMT_START,
			pg_query.TransactionStmtKind_TRANS_STMT_RELEASE,
			pg_query.TransactionStmtKind_TRANS_STMT_ROLLBACK_TO,
			pg_query.TransactionStmtKind_TRANS_STMT_COMMIT_PREPARED,
			pg_query.TransactionStmtKind_TRANS_STMT_ROLLBACK_PREPARED:
			return 0
		case pg_query.TransactionStmtKind_TRANS_STMT_SAVEPOINT:
			return NeedsTenant
		case pg_query.TransactionStmtKind_TRANS_STMT_COMMIT,
			pg_query.TransactionStmtKind_TRANS_STMT_ROLLBACK,
			pg_query.TransactionStmtKind_TRANS_STMT_PREPARE:
			return EndsTxn
		}
		return Unknown
	case *pg_query.Node_VariableSetStmt, *pg_query.Node_VariableShowStmt:
		// SET, RESET and SHOW read no data (their values are literals), so
		// they do not need the tenant; injecting before them would take a
		// snapshot and make a following BEGIN ISOLATION LEVEL fail.
		return 0
	case *pg_query.Node_DiscardStmt:
		if s.DiscardStmt.Target == pg_query.DiscardMode_DISCARD_ALL {
			return EndsTxn | DropsPrepared
		}
	case *pg_query.Node_DeallocateStmt:
		if s.DeallocateStmt.Name == "" { // DEALLOCATE ALL
			return NeedsTenant | DropsPrepared
		}
	case *pg_query.Node_CallStmt:
		return NeedsTenant | EndsTxn // a procedure may COMMIT
	case *pg_query.Node_ExecuteStmt:
		// The statement may have been prepared by a protocol Parse, which
		// takes any statement: COMMIT AND CHAIN, CALL, ...
		return Unknown
	case *pg_query.Node_PrepareStmt:
		return NeedsTenant | Prepares
	case *pg_query.Node_CopyStmt:
		if copyFromStdin(s.CopyStmt) {
			return NeedsTenant | CopyIn
		}
	}
	return NeedsTenant
}

// transactionSet are the VAR_SET_MULTI names of transaction control, which
// tenants may run.
var transactionSet = map[string]bool{
	"TRANSACTION":             true,
	"SESSION CHARACTERISTICS": true,
	"TRANSACTION SNAPSHOT":    true,
}

func copyFromStdin(c *pg_query.CopyStmt) bool {
	return c.IsFrom && !c.IsProgram && c.Filename == ""
}

// analysis is the state of deciding one text.
type analysis struct {
	e          *Engine
	x          *Explanation // nil unless explaining
	sql        string       // the whole text
	stmt       int          // index of the statement being analysed
	start, end int          // its byte range in sql
	frames     []frame      // during walk: the ancestors of the node visited
	v          *Violation   // first violation for every tenant session
	block      *Violation   // first violation audit mode refuses too (the walk goes on until it)
	ro         *Violation   // first violation that only read-only sessions get

	temps []tempRef // names the session must have created, first use each
	// tempAccess is the Object.Access of the next needTemp (explain only).
	tempAccess string
	tempSeen   map[string]bool // names in temps
	created    map[string]bool // temporary tables created by earlier statements of the text
	pending    []string        // temporary tables the current statement creates
	qualify    []int           // Decision.TempQualify, in walk order
	constUsed  bool            // a constant's value was consulted
}

// fail records v as the violation of the current statement at pos (a
// node location, -1 if unknown), unless one was found already.
func (a *analysis) fail(v *Violation, pos int32) {
	if a.block != nil || a.v != nil && v.Reason.Auditable() {
		return
	}
	v.Stmt = a.stmt
	v.Pos = int(pos)
	if pos < 0 {
		v.Pos = -1
	}
	if a.v == nil {
		a.v = v
	}
	if !v.Reason.Auditable() {
		a.block = v
	}
}

// trace records o, found in the current statement, when explaining.
func (a *analysis) trace(o Object) {
	if a.x == nil {
		return
	}
	o.Stmt = a.stmt
	a.x.Objects = append(a.x.Objects, o)
}

// readOnly records that what (e.g. "INSERT") is refused to read-only
// sessions.
func (a *analysis) readOnly(what string, pos int32) {
	if a.ro != nil {
		return
	}
	v := newViolation(ReasonReadOnly, "", fmt.Sprintf("pgmoat: %s is not allowed in a read-only session", what), "")
	v.Stmt, v.Pos = a.stmt, max(int(pos), -1)
	a.ro = v
}

// needTemp records that name must be a temporary table of the session,
// with the violation v if it is not. A table created earlier in the same
// text needs nothing.
func (a *analysis) needTemp(name string, v *Violation, pos int32) {
	if a.x != nil {
		o := Object{Kind: ObjectRelation, Name: "pg_temp." + name, Access: a.tempAccess,
			Class: "temporary table created earlier in this text", Pos: max(int(pos), -1)}
		if !a.created[name] {
			o.Class, o.temp = "not in the catalog: must be a temporary table of this session", name
			o.setVerdict(v)
		} else {
			o.setVerdict(nil)
		}
		a.trace(o)
	}
	if a.created[name] || a.tempSeen[name] {
		return
	}
	a.tempSeen[name] = true
	v.Stmt, v.Pos = a.stmt, max(int(pos), -1)
	a.temps = append(a.temps, tempRef{name: name, v: v})
}

func unknownTemp(name string) *Violation {
	return newViolation(ReasonUnknownRelation, name,
		fmt.Sprintf("pgmoat: relation %q is not in pgmoat's catalog and is not a temporary table of this session", name),
		"if it was created after pgmoat started, reload pgmoat")
}

// checkStmt applies the statement-level rules: which kinds of statement a
// tenant may run at all, settings, reserved names, temporary tables. The
// contents (relations, functions) are checked by walk. depth > 0 for a
// statement inside EXPLAIN, PREPARE, DECLARE, COPY or CREATE TABLE AS.
func (a *analysis) checkStmt(n *pg_query.Node, depth int) {
	switch s := n.GetNode().(type) {
	case *pg_query.Node_SelectStmt, *pg_query.Node_InsertStmt, *pg_query.Node_UpdateStmt,
		*pg_query.Node_DeleteStmt, *pg_query.Node_MergeStmt:
		// walk checks them, read-only included (they also hide in CTEs)
	case *pg_query.Node_VariableShowStmt, *pg_query.Node_DiscardStmt:
	case *pg_query.Node_ConstraintsSetStmt:
		// SET CONSTRAINTS only changes when this transaction's deferrable
		// constraints are checked; its names are constraints, not relations.
	case *pg_query.Node_CallStmt:
		// The procedure itself is checked by walk, as a function call.
		a.readOnly("CALL", -1)
	case *pg_query.Node_TransactionStmt:
		switch s.TransactionStmt.Kind {
		case pg_query.TransactionStmtKind_TRANS_STMT_PREPARE,
			pg_query.TransactionStmtKind_TRANS_STMT_COMMIT_PREPARED,
			pg_query.TransactionStmtKind_TRANS_STMT_ROLLBACK_PREPARED:
			a.fail(newViolation(ReasonStatement, "",
				"pgmoat: two-phase commit is not allowed: prepared transactions outlive the session", ""), -1)
		}
	case *pg_query.Node_VariableSetStmt:
		a.checkSet(s.VariableSetStmt)
	case *pg_query.Node_ExplainStmt:
		a.checkStmt(s.ExplainStmt.Query, depth+1)
	case *pg_query.Node_PrepareStmt:
		a.reserved("prepared statement", s.PrepareStmt.Name)
		a.checkStmt(s.PrepareStmt.Query, depth+1)
	case *pg_query.Node_ExecuteStmt:
		a.reserved("prepared statement", s.ExecuteStmt.Name)
	case *pg_query.Node_DeallocateStmt:
		a.reserved("prepared statement", s.DeallocateStmt.Name)
	case *pg_query.Node_DeclareCursorStmt:
		a.reserved("cursor", s.DeclareCursorStmt.Portalname)
		a.checkStmt(s.DeclareCursorStmt.Query, depth+1)
	case *pg_query.Node_FetchStmt:
		a.reserved("cursor", s.FetchStmt.Portalname)
	case *pg_query.Node_ClosePortalStmt:
		a.reserved("cursor", s.ClosePortalStmt.Portalname)
	case *pg_query.Node_CopyStmt:
		c := s.CopyStmt
		if c.IsProgram || c.Filename != "" {
			a.fail(newViolation(ReasonStatement, "",
				"pgmoat: COPY to or from a file or program is not allowed", "use COPY ... FROM STDIN or TO STDOUT"), -1)
			return
		}
		if c.IsFrom {
			a.readOnly("COPY FROM", -1)
		}
		if c.Query != nil {
			a.checkStmt(c.Query, depth+1)
		}
	case *pg_query.Node_CreateStmt:
		a.checkCreateTemp(s.CreateStmt)
	case *pg_query.Node_CreateTableAsStmt:
		// The target is checked by walk (IntoClause), as for SELECT INTO.
		if s.CreateTableAsStmt.Objtype != pg_query.ObjectType_OBJECT_TABLE {
			a.refuse(n)
			return
		}
		a.checkStmt(s.CreateTableAsStmt.Query, depth+1)
	case *pg_query.Node_DropStmt:
		a.checkDrop(n, s.DropStmt)
	case *pg_query.Node_LockStmt:
		if s.LockStmt.Mode > 1 { // stronger than ACCESS SHARE
			a.readOnly("LOCK", -1)
		}
	case nil:
		a.fail(newViolation(ReasonStatement, "", "pgmoat: empty statement node", ""), -1)
	default:
		a.refuse(n)
	}
}

// refuse refuses a kind of statement tenants may not run.
func (a *analysis) refuse(n *pg_query.Node) {
	name := nodeName(n)
	tag := statementTag(name)
	reason, why := ReasonStatement, ""
	if isDDL(name) {
		reason, why = ReasonDDL, " (DDL)"
	}
	switch name {
	case "TruncateStmt":
		why = ": row-level security does not apply to it"
	case "DoStmt":
		why = ": anonymous code blocks can run any SQL"
	case "ListenStmt", "NotifyStmt", "UnlistenStmt":
		why = ": channels are shared by all tenants"
	}
	a.fail(newViolation(reason, "", fmt.Sprintf("pgmoat: %s is not allowed%s", tag, why), ""), -1)
}

// nodeName is the protobuf name of the statement in n, e.g. "CreateStmt".
func nodeName(n *pg_query.Node) string {
	m := n.ProtoReflect()
	fd := m.WhichOneof(m.Descriptor().Oneofs().ByName("node"))
	if fd == nil || fd.Message() == nil {
		return "unknown"
	}
	return string(fd.Message().Name())
}

func (a *analysis) reserved(what, name string) {
	if len(name) >= len(ReservedPrefix) && strings.EqualFold(name[:len(ReservedPrefix)], ReservedPrefix) {
		a.fail(newViolation(ReasonReservedName, name,
			fmt.Sprintf("pgmoat: %s name %q is reserved for pgmoat", what, name), "choose a name that does not start with pgmoat_"), -1)
	}
}

func (a *analysis) checkSet(s *pg_query.VariableSetStmt) {
	var kind setKind
	switch s.Kind {
	case pg_query.VariableSetKind_VAR_SET_VALUE, pg_query.VariableSetKind_VAR_SET_CURRENT:
		kind = setValue
	case pg_query.VariableSetKind_VAR_SET_DEFAULT:
		kind = setDefault
	case pg_query.VariableSetKind_VAR_RESET:
		kind = setReset
	case pg_query.VariableSetKind_VAR_RESET_ALL:
		kind = setResetAll
	case pg_query.VariableSetKind_VAR_SET_MULTI:
		if transactionSet[s.Name] {
			return
		}
		a.fail(newViolation(ReasonSetting, s.Name, fmt.Sprintf("pgmoat: SET %s is not allowed", s.Name), ""), -1)
		return
	default:
		a.fail(newViolation(ReasonSetting, s.Name, "pgmoat: unrecognised SET statement", ""), -1)
		return
	}
	var values []string
	if s.Kind == pg_query.VariableSetKind_VAR_SET_VALUE {
		for _, arg := range s.Args {
			v, ok := a.constString(arg)
			if !ok {
				values = nil
				break
			}
			values = append(values, v)
		}
	}
	v := a.e.checkSetting(kind, s.Name, values)
	if a.x != nil {
		o := Object{Kind: ObjectSetting, Name: strings.ToLower(s.Name), Access: "set", Class: "setting", Pos: -1}
		switch kind {
		case setReset, setDefault:
			o.Access = "reset"
		case setResetAll:
			o.Name, o.Access = "all", "reset"
		}
		o.setVerdict(v)
		a.trace(o)
	}
	if v != nil {
		a.fail(v, -1)
	}
}

// constString returns the text of a literal constant, and notes that the
// decision depends on it (it cannot be shared by texts that differ only in
// their constants).
func (a *analysis) constString(n *pg_query.Node) (string, bool) {
	a.constUsed = true
	return constString(n)
}

// constString returns the text of a literal constant.
func constString(n *pg_query.Node) (string, bool) {
	c := n.GetAConst()
	if c == nil || c.Isnull {
		return "", false
	}
	switch v := c.Val.(type) {
	case *pg_query.A_Const_Sval:
		return v.Sval.GetSval(), true
	case *pg_query.A_Const_Ival:
		return strconv.Itoa(int(v.Ival.GetIval())), true
	case *pg_query.A_Const_Fval:
		return v.Fval.GetFval(), true
	case *pg_query.A_Const_Boolval:
		return strconv.FormatBool(v.Boolval.GetBoolval()), true
	}
	return "", false
}

// isTempTarget reports whether a table being created is temporary.
func isTempTarget(rel *pg_query.RangeVar) bool {
	switch rel.GetSchemaname() {
	case "":
		return rel.GetRelpersistence() == "t"
	case "pg_temp":
		return true
	}
	return false
}

// checkCreateTemp allows plain CREATE TEMPORARY TABLE: temporary tables
// are private to the server session. Partitioning and inheritance would tie
// it to other tables. Its expressions are checked by walk.
func (a *analysis) checkCreateTemp(s *pg_query.CreateStmt) {
	if s.Relation == nil || !isTempTarget(s.Relation) {
		a.fail(newViolation(ReasonDDL, "", "pgmoat: CREATE TABLE is not allowed (DDL); only CREATE TEMPORARY TABLE is", ""), -1)
		return
	}
	if len(s.InhRelations) > 0 || s.Partbound != nil || s.Partspec != nil {
		a.fail(newViolation(ReasonDDL, s.Relation.Relname,
			"pgmoat: a temporary table may not be partitioned or inherit from another table", ""), s.Relation.Location)
		return
	}
	a.createTemp(s.Relation)
}

// createTemp records a temporary table the statement creates. Its name
// must not be one that unqualified names resolve to in the catalog: the
// server looks in the session's temporary schema first, so the table would
// change what such names mean behind the policy's back.
func (a *analysis) createTemp(rel *pg_query.RangeVar) {
	name := rel.Relname
	var v *Violation
	if key, _, shadows := a.e.resolveRelation(name); shadows {
		v = newViolation(ReasonDDL, name,
			fmt.Sprintf("pgmoat: temporary table %q would hide relation %q from unqualified names", name, key),
			"choose a name that no relation on the search path has")
	}
	if a.x != nil {
		o := Object{Kind: ObjectRelation, Name: "pg_temp." + name, Access: "create",
			Class: "temporary table, created here", Pos: max(int(rel.Location), -1)}
		o.setVerdict(v)
		a.trace(o)
	}
	if v != nil {
		a.fail(v, rel.Location)
		return
	}
	a.readOnly("CREATE TEMPORARY TABLE", rel.Location)
	a.pending = append(a.pending, name)
}

// checkDrop allows DROP TABLE of the session's temporary tables only.
func (a *analysis) checkDrop(n *pg_query.Node, s *pg_query.DropStmt) {
	if s.RemoveType != pg_query.ObjectType_OBJECT_TABLE || s.Concurrent {
		a.refuse(n)
		return
	}
	var names []dropName // where the names are in the text, found on first need
	for i, obj := range s.Objects {
		parts, ok := stringList(obj.GetList().GetItems())
		var name string
		switch {
		case ok && len(parts) == 1:
			name = parts[0]
			// The String nodes of the names carry no location.
			if names == nil {
				names = dropNames(a.sql[a.start:a.end])
			}
			pos := -1
			if len(names) == len(s.Objects) && names[i].parts == 1 {
				pos = a.start + names[i].start
			}
			if !a.qualifyTemp(name, pos) {
				return
			}
		case ok && len(parts) == 2 && parts[0] == "pg_temp":
			name = parts[1]
		default:
			name := strings.Join(parts, ".")
			a.fail(newViolation(ReasonDDL, name,
				fmt.Sprintf("pgmoat: DROP TABLE %q is not allowed: only temporary tables of this session may be dropped", name), ""), -1)
			return
		}
		a.tempAccess = "drop"
		a.needTemp(name, newViolation(ReasonDDL, name,
			fmt.Sprintf("pgmoat: DROP TABLE %q is not allowed: it is not a temporary table of this session", name), ""), -1)
	}
}

// qualifyTemp records that "pg_temp." goes before the unqualified name of
// a temporary table that starts at byte pos of the text (see
// Decision.TempQualify). A name that cannot be placed in the current
// statement is refused: left unqualified, it could resolve to a relation
// the policy has never seen.
func (a *analysis) qualifyTemp(name string, pos int) bool {
	if pos < a.start || pos >= a.end || !isNameStart(a.sql, pos) {
		a.fail(newViolation(ReasonStatement, name,
			fmt.Sprintf("pgmoat: cannot locate temporary table name %q in the text", name), ""), -1)
		return false
	}
	a.qualify = append(a.qualify, pos)
	return true
}

// isNameStart reports whether an identifier can start at byte i of sql:
// a letter, an underscore, a non-ASCII byte, or the opening quote of "x"
// or U&"x". (pg_temp. may go before all of them.)
func isNameStart(sql string, i int) bool {
	switch c := sql[i]; {
	case c == '"', c == '_', c >= utf8.RuneSelf, 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z':
		return true
	}
	return false
}

// dropName is where one name of a DROP statement is in its text.
type dropName struct {
	start int // byte offset of its first token
	parts int // number of dot-separated parts
}

// dropNames finds the names of a DROP TABLE statement (text is the
// statement alone) with the scanner, in order. It returns nil unless the
// tokens read exactly DROP TABLE [IF EXISTS] name [, ...] [CASCADE |
// RESTRICT] [;], comments aside.
func dropNames(text string) []dropName {
	res, err := pg_query.Scan(text)
	if err != nil {
		return nil
	}
	toks := make([]*pg_query.ScanToken, 0, len(res.Tokens))
	for _, t := range res.Tokens {
		if t.Token != pg_query.Token_SQL_COMMENT && t.Token != pg_query.Token_C_COMMENT {
			toks = append(toks, t)
		}
	}
	i := 0
	next := func(want pg_query.Token) bool {
		if i < len(toks) && toks[i].Token == want {
			i++
			return true
		}
		return false
	}
	// part consumes one part of a name: an identifier or a keyword,
	// with the UESCAPE clause of a U&"..." identifier.
	part := func() bool {
		if i >= len(toks) {
			return false
		}
		t := toks[i]
		switch {
		case t.Token == pg_query.Token_IDENT:
		case t.Token == pg_query.Token_UIDENT:
			i++
			return !next(pg_query.Token_UESCAPE) || next(pg_query.Token_SCONST)
		case t.KeywordKind == pg_query.KeywordKind_NO_KEYWORD:
			return false
		}
		i++
		return true
	}
	if !next(pg_query.Token_DROP) || !next(pg_query.Token_TABLE) {
		return nil
	}
	if next(pg_query.Token_IF_P) && !next(pg_query.Token_EXISTS) {
		return nil
	}
	var names []dropName
	for {
		n := dropName{parts: 1}
		if i < len(toks) {
			n.start = int(toks[i].Start)
		}
		if !part() {
			return nil
		}
		for next(pg_query.Token_ASCII_46) { // '.'
			if !part() {
				return nil
			}
			n.parts++
		}
		names = append(names, n)
		if !next(pg_query.Token_ASCII_44) { // ','
			break
		}
	}
	_ = next(pg_query.Token_CASCADE) || next(pg_query.Token_RESTRICT)
	next(pg_query.Token_ASCII_59) // ';'
	if i != len(toks) {
		return nil
	}
	return names
}

// stringList returns the values of a list of String nodes.
func stringList(items []*pg_query.Node) ([]string, bool) {
	out := make([]string, 0, len(items))
	for _, it := range items {
		s := it.GetString_()
		if s == nil {
			return out, false
		}
		out = append(out, s.Sval)
	}
	return out, len(out) > 0
}

// walk checks everything inside a statement: every relation, function
// call, operator, SELECT INTO target and data-modifying node, wherever it
// hides (subqueries, CTEs, defaults, EXPLAIN, PREPARE, ...). The tree is
// only read. It visits every message, depth first, each message's fields
// in declaration order, so that the first violation found is always the
// same; it stops there unless explaining.
func (a *analysis) walk(n *pg_query.Node) {
	a.frames = a.frames[:0]
	a.visit(n.ProtoReflect())
}

// visit checks m and then what is below it; false means stop. a.frames
// holds m's ancestors (Node wrappers left out) while it runs.
func (a *analysis) visit(m protoreflect.Message) bool {
	if _, wrapper := m.Interface().(*pg_query.Node); wrapper {
		// A Node holds one node of one of ~250 types: go straight to it.
		if fd := m.WhichOneof(nodeOneof); fd != nil && fd.Message() != nil {
			return a.visit(m.Get(fd).Message())
		}
		return true
	}
	if !a.check(m.Interface()) {
		return false
	}
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		if fd.Message() == nil || !m.Has(fd) {
			continue
		}
		if !fd.IsList() {
			if !a.descend(m, fd.Name(), -1, m.Get(fd).Message()) {
				return false
			}
			continue
		}
		l := m.Get(fd).List()
		for j := range l.Len() {
			if !a.descend(m, fd.Name(), j, l.Get(j).Message()) {
				return false
			}
		}
	}
	return true
}

// nodeOneof is the oneof of pg_query.Node.
var nodeOneof = (&pg_query.Node{}).ProtoReflect().Descriptor().Oneofs().Get(0)

// descend visits child, reached from parent through field (at list index,
// or -1).
func (a *analysis) descend(parent protoreflect.Message, field protoreflect.Name, index int, child protoreflect.Message) bool {
	a.frames = append(a.frames, frame{msg: parent.Interface(), field: field, index: index})
	ok := a.visit(child)
	a.frames = a.frames[:len(a.frames)-1]
	return ok
}

// check checks one node of the tree; false means stop.
func (a *analysis) check(m proto.Message) bool {
	switch x := m.(type) {
	case *pg_query.RangeVar:
		a.rangeVar(x, append(slices.Clip(a.frames), frame{msg: x, index: -1}))
	case *pg_query.FuncCall:
		a.funcCall(x)
	case *pg_query.A_Expr:
		a.exprOperator(x)
	case *pg_query.SubLink:
		switch x.SubLinkType {
		case pg_query.SubLinkType_ANY_SUBLINK, pg_query.SubLinkType_ALL_SUBLINK, pg_query.SubLinkType_ROWCOMPARE_SUBLINK:
			if len(x.OperName) == 0 {
				a.userOperator("=", x.Location) // x IN (SELECT ...)
			} else {
				a.operator(x.OperName, x.Location)
			}
		}
	case *pg_query.CaseExpr:
		if x.Arg != nil {
			a.userOperator("=", x.Location) // CASE x WHEN v THEN ...
		}
	case *pg_query.JoinExpr:
		if x.IsNatural || len(x.UsingClause) > 0 {
			a.userOperator("=", -1)
		}
	case *pg_query.SortBy:
		a.operator(x.UseOp, x.Location)
	case *pg_query.IntoClause:
		a.into(x)
	case *pg_query.SelectStmt:
		if len(x.LockingClause) > 0 {
			a.readOnly("SELECT FOR UPDATE/SHARE", -1)
		}
	case *pg_query.InsertStmt:
		a.readOnly("INSERT", x.GetRelation().GetLocation())
	case *pg_query.UpdateStmt:
		a.readOnly("UPDATE", x.GetRelation().GetLocation())
	case *pg_query.DeleteStmt:
		a.readOnly("DELETE", x.GetRelation().GetLocation())
	case *pg_query.MergeStmt:
		a.readOnly("MERGE", x.GetRelation().GetLocation())
	case *pg_query.TypeCast:
		if a.x != nil {
			a.traceRegclass(x)
		}
	}
	return a.block == nil || a.x != nil
}

// frame is one ancestor of a node (Node wrappers left out) and how the path
// goes on from it: through field, at list index (or -1).
type frame struct {
	msg   proto.Message
	field protoreflect.Name
	index int
}

// withClauseOf returns the WITH clause of a statement frame.
func withClauseOf(m proto.Message) *pg_query.WithClause {
	switch s := m.(type) {
	case *pg_query.SelectStmt:
		return s.WithClause
	case *pg_query.InsertStmt:
		return s.WithClause
	case *pg_query.UpdateStmt:
		return s.WithClause
	case *pg_query.DeleteStmt:
		return s.WithClause
	case *pg_query.MergeStmt:
		return s.WithClause
	}
	return nil
}

// isCTE reports whether an unqualified name used at the end of fs refers to
// a WITH query of an enclosing statement. Inside a non-recursive WITH list
// only earlier entries are visible; inside WITH RECURSIVE all are.
func isCTE(name string, fs []frame) bool {
	for i := len(fs) - 2; i >= 0; i-- {
		wc := withClauseOf(fs[i].msg)
		if wc == nil {
			continue
		}
		visible := len(wc.Ctes)
		if fs[i].field == "with_clause" && !wc.Recursive && i+1 < len(fs) {
			visible = fs[i+1].index // position within the WITH list
			if visible < 0 {
				visible = 0
			}
		}
		for _, c := range wc.Ctes[:min(visible, len(wc.Ctes))] {
			if c.GetCommonTableExpr().GetCtename() == name {
				return true
			}
		}
	}
	return false
}

// lockedByClause reports whether a relation at the end of fs is locked by
// a SELECT ... FOR UPDATE/SHARE: it is in the FROM clause of such a SELECT,
// directly or through joins and subqueries in FROM.
func lockedByClause(fs []frame) bool {
	for i := len(fs) - 2; i >= 0; i-- {
		switch m := fs[i].msg.(type) {
		case *pg_query.SelectStmt:
			if fs[i].field != "from_clause" {
				return false
			}
			if len(m.LockingClause) > 0 {
				return true
			}
		case *pg_query.JoinExpr:
			if fs[i].field != "larg" && fs[i].field != "rarg" {
				return false
			}
		case *pg_query.RangeSubselect:
			if fs[i].field != "subquery" {
				return false
			}
		default:
			return false
		}
	}
	return false
}

// rangeVar checks one relation reference; fs are its ancestors, outermost
// first, ending with rv itself.
func (a *analysis) rangeVar(rv *pg_query.RangeVar, fs []frame) {
	acc, target := accessRead, false
	if len(fs) >= 2 {
		parent := fs[len(fs)-2]
		switch pm := parent.msg.(type) {
		case *pg_query.IntoClause:
			return // a table being created: see into
		case *pg_query.CreateStmt:
			if parent.field == "relation" {
				return // see checkCreateTemp
			}
		case *pg_query.LockingClause:
			return // FOR UPDATE OF names FROM items, not relations
		case *pg_query.ConstraintsSetStmt:
			return // constraint names
		case *pg_query.InsertStmt, *pg_query.UpdateStmt, *pg_query.DeleteStmt, *pg_query.MergeStmt:
			if parent.field == "relation" {
				acc, target = accessWrite, true
			}
		case *pg_query.CopyStmt:
			if pm.IsFrom {
				acc = accessWrite
			}
		case *pg_query.LockStmt:
			acc = accessLock
		}
	}
	if acc == accessRead && lockedByClause(fs) {
		acc = accessWrite
	}

	name := rv.Relname
	var key string
	var rel *Relation
	switch rv.Schemaname {
	case "":
		// The target of INSERT/UPDATE/DELETE/MERGE is never a WITH query.
		if !target && isCTE(name, fs) {
			a.trace(Object{Kind: ObjectRelation, Name: name, Access: acc.String(), Class: "WITH query", Allowed: true, Pos: int(rv.Location)})
			return
		}
		var ok bool
		if key, rel, ok = a.e.resolveRelation(name); !ok {
			if a.qualifyTemp(name, int(rv.Location)) {
				a.tempAccess = acc.String()
				a.needTemp(name, unknownTemp(name), rv.Location)
			}
			return
		}
	case "pg_temp":
		a.tempAccess = acc.String()
		a.needTemp(name, unknownTemp("pg_temp."+name), rv.Location)
		return
	default:
		key = rv.Schemaname + "." + name
		rel = a.e.cat.Relations[key]
	}
	v := a.e.checkRelation(key, rel, acc)
	if a.x != nil {
		a.traceRelation(key, rel, acc.String(), "", v, rv.Location, 0)
	}
	if v != nil {
		a.fail(v, rv.Location)
	}
}

// traceRelation records a relation for Explain, and what it reads if it
// is a view (reached via the view).
func (a *analysis) traceRelation(key string, rel *Relation, acc, via string, v *Violation, pos int32, depth int) {
	o := Object{Kind: ObjectRelation, Name: key, Access: acc, Class: a.e.relationClass(key, rel), Via: via, Pos: max(int(pos), -1)}
	o.setVerdict(v)
	a.trace(o)
	if rel == nil || (rel.Kind != 'v' && rel.Kind != 'm') || depth >= maxViewDepth {
		return
	}
	for _, dep := range rel.DependsOn {
		dr := a.e.cat.Relations[dep]
		a.traceRelation(dep, dr, acc, key, a.e.checkRelation(dep, dr, accessFromString(acc)), pos, depth+1)
	}
	for _, fn := range rel.Functions {
		schema, name, _ := strings.Cut(fn, ".")
		fkey, fv := a.e.checkFunction(schema, name)
		o := Object{Kind: ObjectFunction, Name: fkey, Access: "call", Class: a.e.functionClass(fkey, a.e.cat.Functions[fkey]), Via: key, Pos: max(int(pos), -1)}
		o.setVerdict(fv)
		a.trace(o)
	}
}

// traceRegclass records a constant name cast to regclass. The cast only
// looks the name up (an unknown name is a server error), so it is allowed
// whatever the relation is; what reads the relation through its OID is a
// function, checked on its own.
func (a *analysis) traceRegclass(tc *pg_query.TypeCast) {
	names, _ := stringList(tc.GetTypeName().GetNames())
	if len(names) == 0 || names[len(names)-1] != "regclass" {
		return
	}
	lit, ok := a.constString(tc.Arg)
	if !ok {
		return
	}
	parts, ok := parseQualifiedName(lit)
	if !ok {
		return
	}
	key, rel := a.e.lookupName(parts)
	a.trace(Object{Kind: ObjectRelation, Name: key, Access: "regclass", Class: a.e.relationClass(key, rel), Allowed: true, Pos: int(tc.Location)})
}

// funcCall checks one function call.
func (a *analysis) funcCall(fc *pg_query.FuncCall) {
	parts, ok := stringList(fc.Funcname)
	if !ok {
		a.fail(newViolation(ReasonFunction, "", "pgmoat: function name not understood", ""), fc.Location)
		return
	}
	schema, name := "", parts[len(parts)-1]
	if len(parts) > 1 {
		schema = parts[len(parts)-2]
	}
	key, v := a.e.checkFunction(schema, name)
	fn := a.e.cat.Functions[key]
	if a.x != nil {
		o := Object{Kind: ObjectFunction, Name: key, Access: "call", Class: a.e.functionClass(key, fn), Pos: int(fc.Location)}
		o.setVerdict(v)
		a.trace(o)
	}
	if v != nil {
		a.fail(v, fc.Location)
		return
	}
	if !isBuiltin(key, fn) && (fn == nil || fn.Volatile || fn.Kind == 'p') {
		// A volatile user function may write; stable and immutable ones
		// run their queries read-only.
		a.readOnly(fmt.Sprintf("calling volatile function %q", key), fc.Location)
	}
	switch key {
	case "pg_catalog.nextval":
		a.readOnly("nextval", fc.Location)
		a.sequenceArg(key, fc)
	case "pg_catalog.currval":
		a.sequenceArg(key, fc)
	}
}

// sequenceArg checks the sequence named by the argument of nextval or
// currval: a constant naming a sequence owned by a protected table.
func (a *analysis) sequenceArg(fn string, fc *pg_query.FuncCall) {
	var lit string
	ok := len(fc.Args) == 1
	if ok {
		arg := fc.Args[0]
		if tc := arg.GetTypeCast(); tc != nil {
			names, _ := stringList(tc.GetTypeName().GetNames())
			ok = len(names) > 0 && names[len(names)-1] == "regclass"
			arg = tc.Arg
		}
		if ok {
			lit, ok = a.constString(arg)
		}
	}
	var parts []string
	if ok {
		parts, ok = parseQualifiedName(lit)
	}
	if !ok {
		a.fail(newViolation(ReasonFunction, fn,
			fmt.Sprintf("pgmoat: %s needs a constant sequence name", fn), ""), fc.Location)
		return
	}
	key, rel := a.e.lookupName(parts)
	v := a.e.checkRelation(key, rel, accessRead)
	if a.x != nil {
		access := strings.TrimPrefix(fn, pgCatalog+".")
		a.traceRelation(key, rel, access, "", v, fc.Location, 0)
	}
	if v != nil {
		a.fail(v, fc.Location)
	}
}

// lookupName resolves a name given as text (parseQualifiedName's parts) to
// a catalog key and entry (nil if none; then key is the name as given).
func (e *Engine) lookupName(parts []string) (string, *Relation) {
	if len(parts) == 1 {
		if key, rel, ok := e.resolveRelation(parts[0]); ok {
			return key, rel
		}
		return parts[0], nil
	}
	key := parts[len(parts)-2] + "." + parts[len(parts)-1]
	return key, e.cat.Relations[key]
}

// parseQualifiedName splits a name given as text ('public."Foo"') the way
// regclass input does: dots separate parts, double quotes keep case and
// dots, unquoted parts fold to lower case.
func parseQualifiedName(s string) ([]string, bool) {
	var parts []string
	var cur strings.Builder
	quoted, wasQuoted := false, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quoted && c == '"' && i+1 < len(s) && s[i+1] == '"':
			cur.WriteByte('"')
			i++
		case c == '"':
			quoted = !quoted
			wasQuoted = true
		case quoted:
			cur.WriteByte(c)
		case c == '.':
			if cur.Len() == 0 && !wasQuoted {
				return nil, false
			}
			parts = append(parts, cur.String())
			cur.Reset()
			wasQuoted = false
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			// PostgreSQL allows whitespace around parts.
		default:
			if c < utf8.RuneSelf && 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			cur.WriteByte(c)
		}
	}
	if quoted || (cur.Len() == 0 && !wasQuoted) {
		return nil, false
	}
	parts = append(parts, cur.String())
	if len(parts) > 3 {
		return nil, false
	}
	return parts, true
}

// operator refuses operators qualified with a schema other than
// pg_catalog (OPERATOR(myschema.+)): a user operator runs a user function.
// Unqualified ones go to userOperator.
func (a *analysis) operator(name []*pg_query.Node, pos int32) {
	if len(name) == 1 {
		a.userOperator(name[0].GetString_().GetSval(), pos)
		return
	}
	if len(name) < 2 {
		return
	}
	parts, ok := stringList(name)
	if ok && parts[len(parts)-2] == pgCatalog {
		// Catalog.Operators has pg_catalog's SECURITY DEFINER ones.
		op := parts[len(parts)-1]
		a.checkOperator(op, a.e.cat.Operators[pgCatalog+"."+op], pos)
		return
	}
	op := strings.Join(parts, ".")
	v := newViolation(ReasonFunction, op,
		fmt.Sprintf("pgmoat: operator %q is not allowed: only pg_catalog operators may be named with a schema", op), "")
	o := Object{Kind: ObjectOperator, Name: op, Access: "call", Class: "user operator", Pos: max(int(pos), -1)}
	o.setVerdict(v)
	a.trace(o)
	a.fail(v, pos)
}

// exprOperator checks the operators an expression calls: the one it names,
// or for BETWEEN the comparisons PostgreSQL expands it into.
func (a *analysis) exprOperator(x *pg_query.A_Expr) {
	switch x.Kind {
	case pg_query.A_Expr_Kind_AEXPR_BETWEEN, pg_query.A_Expr_Kind_AEXPR_NOT_BETWEEN,
		pg_query.A_Expr_Kind_AEXPR_BETWEEN_SYM, pg_query.A_Expr_Kind_AEXPR_NOT_BETWEEN_SYM:
		for _, op := range []string{"<", "<=", ">", ">="} {
			a.userOperator(op, x.Location)
		}
	default:
		a.operator(x.Name, x.Location)
	}
}

// userOperator checks an unqualified operator (named in the text, or
// implied: IN, CASE x WHEN, JOIN USING compare with =): the server may pick
// any operator of that name in any schema (which one depends on the operand
// types), so every function they call must be one tenants may call.
func (a *analysis) userOperator(op string, pos int32) {
	a.checkOperator(op, a.e.operators[op], pos)
}

// checkOperator refuses the operator op if one of fns, the functions it may
// call, is one tenants may not call.
func (a *analysis) checkOperator(op string, fns []string, pos int32) {
	for _, fn := range fns {
		schema, name, _ := strings.Cut(fn, ".")
		_, v := a.e.checkFunction(schema, name)
		if v != nil {
			v = newViolation(ReasonFunction, fn,
				fmt.Sprintf("pgmoat: operator %q may call function %q, which tenants may not call", op, fn),
				"allow the function in the configuration if it is safe for tenants, or qualify the operator: OPERATOR(pg_catalog."+op+")")
		}
		if a.x != nil {
			o := Object{Kind: ObjectOperator, Name: op, Access: "call", Class: "user operator calling " + fn, Pos: max(int(pos), -1)}
			o.setVerdict(v)
			a.trace(o)
		}
		if v != nil {
			a.fail(v, pos)
			return
		}
	}
}

// into checks the target of SELECT INTO / CREATE TABLE AS: temporary only.
func (a *analysis) into(ic *pg_query.IntoClause) {
	if ic.Rel == nil || !isTempTarget(ic.Rel) || ic.ViewQuery != nil {
		a.fail(newViolation(ReasonDDL, ic.GetRel().GetRelname(),
			"pgmoat: creating a table is not allowed (DDL); only temporary tables may be created", ""), ic.GetRel().GetLocation())
		return
	}
	a.createTemp(ic.Rel)
}

// parses reports whether sql parses; for tests that must not depend on the
// analysis to know it.
func parses(sql string) bool {
	_, err := pg_query.Parse(sql)
	return err == nil
}

// Fingerprint is pg_query's fingerprint of sql: 16 hex digits, the same for
// texts that differ only in literal values, whitespace and comments (as
// pganalyze and pg_stat_statements-style tooling group them). It is "" when
// sql does not parse. It parses sql each time: use it off the hot path.
func Fingerprint(sql string) string {
	if strings.IndexByte(sql, 0) >= 0 {
		return "" // the parser would stop at the NUL and see a different text
	}
	fp, err := pg_query.Fingerprint(sql)
	if err != nil {
		return ""
	}
	return fp
}

// Normalize returns sql with every constant replaced by a parameter
// reference ($1, $2, ...), so that it can be logged without the values it
// carries. It fails when sql does not parse; the error message can quote
// part of sql, so do not log it where literals must not appear.
func Normalize(sql string) (string, error) {
	if i := strings.IndexByte(sql, 0); i >= 0 {
		return "", errors.New("the query text contains a NUL byte")
	}
	return pg_query.Normalize(sql)
}

// commandOf names a top-level statement for Explain, e.g. "SELECT".
func commandOf(n *pg_query.Node) string {
	switch name := nodeName(n); name {
	case "VariableSetStmt":
		return "SET"
	case "VariableShowStmt":
		return "SHOW"
	case "TransactionStmt":
		return "TRANSACTION CONTROL"
	case "ConstraintsSetStmt":
		return "SET CONSTRAINTS"
	default:
		return statementTag(name)
	}
}

// TenantKey reports whether expr, a row-level security policy expression as
// pg_get_expr prints it, admits only rows of the session's tenant, and
// returns the column compared with it. The expression must be
//
//	column = tenant, where column may be cast to text or varchar, and tenant
//	is current_setting(setting[, missing_ok]), perhaps inside NULLIF(x, c)
//	or a scalar subquery (SELECT ...), perhaps cast to text, varchar, uuid
//	or an integer type: casts that tell distinct values apart;
//	or an AND of conditions, one of which is keyed;
//	or an OR of conditions keyed on one column and of switches:
//	current_setting(other) = c, where other is a custom setting (it has a
//	dot) that is not the tenant's. pgmoat refuses tenants every setting a
//	policy reads (Catalog.PolicySettings), and custom settings can only be
//	set with SET or set_config.
//
// Anything else is not keyed, "OR true" and "<>" above all: mentioning the
// setting is not enough. Nor is an expression that calls set_config
// anywhere: a policy could change the tenant for the rest of the
// transaction. The text cannot show which operator "=" is, which function
// current_setting, or a column's collation: the caller must also check
// that the policy uses no user-defined operator, function or type and no
// nondeterministic collation (pg_depend).
func TenantKey(expr, setting string) (column string, ok bool) {
	if strings.IndexByte(expr, 0) >= 0 || strings.Contains(strings.ToLower(expr), "set_config") {
		return "", false
	}
	tree, err := pg_query.Parse("SELECT WHERE " + expr)
	if err != nil || len(tree.Stmts) != 1 {
		return "", false
	}
	sel := tree.Stmts[0].GetStmt().GetSelectStmt()
	if sel == nil {
		return "", false
	}
	return tenantKey(sel.WhereClause, setting)
}

func tenantKey(n *pg_query.Node, setting string) (column string, ok bool) {
	if b := n.GetBoolExpr(); b != nil {
		switch b.Boolop {
		case pg_query.BoolExprType_AND_EXPR:
			for _, arg := range b.Args {
				if col, ok := tenantKey(arg, setting); ok {
					return col, true
				}
			}
		case pg_query.BoolExprType_OR_EXPR:
			for _, arg := range b.Args {
				if col, ok := tenantKey(arg, setting); ok && (column == "" || col == column) {
					column = col
				} else if ok || !isSwitch(arg, setting) {
					return "", false
				}
			}
			return column, column != ""
		}
		return "", false
	}
	l, r, ok := equality(n)
	if !ok {
		return "", false
	}
	for _, sides := range [][2]*pg_query.Node{{l, r}, {r, l}} {
		if col, ok := columnOf(sides[0]); ok && isTenantSetting(sides[1], setting) {
			return col, true
		}
	}
	return "", false
}

// equality returns the sides of an "=" comparison.
func equality(n *pg_query.Node) (l, r *pg_query.Node, ok bool) {
	a := n.GetAExpr()
	if a == nil || a.Kind != pg_query.A_Expr_Kind_AEXPR_OP {
		return nil, nil, false
	}
	if op, _ := stringList(a.Name); !slices.Equal(op, []string{"="}) && !slices.Equal(op, []string{"pg_catalog", "="}) {
		return nil, nil, false
	}
	return a.Lexpr, a.Rexpr, true
}

// isSwitch reports whether n is current_setting(other[, missing_ok]) = c
// (either way round, casts aside) for a setting other than the tenant's.
func isSwitch(n *pg_query.Node, setting string) bool {
	l, r, ok := equality(n)
	if !ok {
		return false
	}
	for _, sides := range [][2]*pg_query.Node{{l, r}, {r, l}} {
		name, isSetting := settingRead(unwrapCasts(sides[0]))
		_, isConst := constString(unwrapCasts(sides[1]))
		if isSetting && isConst && strings.Contains(name, ".") && !strings.EqualFold(name, setting) {
			return true
		}
	}
	return false
}

// columnOf returns the name of an unqualified column reference, perhaps
// cast to text or varchar (which keep every value distinct).
func columnOf(n *pg_query.Node) (string, bool) {
	for tc := n.GetTypeCast(); tc != nil; tc = n.GetTypeCast() {
		if t := castType(tc); t != "text" && t != "varchar" {
			return "", false
		}
		n = tc.Arg
	}
	c := n.GetColumnRef()
	if c == nil || len(c.Fields) != 1 {
		return "", false
	}
	names, ok := stringList(c.Fields)
	if !ok {
		return "", false
	}
	return names[0], true
}

// isTenantSetting reports whether n reads the tenant setting and nothing
// else: current_setting(setting[, missing_ok]), perhaps cast, in
// NULLIF(..., constant) or in a scalar subquery without FROM.
func isTenantSetting(n *pg_query.Node, setting string) bool {
	switch {
	case n.GetTypeCast() != nil:
		return exactCasts[castType(n.GetTypeCast())] && isTenantSetting(n.GetTypeCast().Arg, setting)
	case n.GetAExpr() != nil:
		a := n.GetAExpr()
		_, isConst := constString(unwrapCasts(a.Rexpr))
		return a.Kind == pg_query.A_Expr_Kind_AEXPR_NULLIF && isConst && isTenantSetting(a.Lexpr, setting)
	case n.GetSubLink() != nil:
		l := n.GetSubLink()
		s := l.Subselect.GetSelectStmt()
		return l.SubLinkType == pg_query.SubLinkType_EXPR_SUBLINK && s != nil && len(s.TargetList) == 1 &&
			len(s.FromClause) == 0 && s.WhereClause == nil && len(s.GroupClause) == 0 && s.HavingClause == nil &&
			len(s.ValuesLists) == 0 && s.WithClause == nil && s.Op == pg_query.SetOperation_SETOP_NONE &&
			s.TargetList[0].GetResTarget() != nil && isTenantSetting(s.TargetList[0].GetResTarget().Val, setting)
	}
	name, ok := settingRead(n)
	return ok && strings.EqualFold(name, setting)
}

// settingRead returns the setting n reads if it is current_setting(name[,
// missing_ok]) with a constant name.
func settingRead(n *pg_query.Node) (string, bool) {
	f := n.GetFuncCall()
	if f == nil || len(f.Args) < 1 || len(f.Args) > 2 || f.AggFilter != nil || f.Over != nil || f.AggStar || f.FuncVariadic {
		return "", false
	}
	name, _ := stringList(f.Funcname)
	if !slices.Equal(name, []string{"current_setting"}) && !slices.Equal(name, []string{"pg_catalog", "current_setting"}) {
		return "", false
	}
	if len(f.Args) == 2 && unwrapCasts(f.Args[1]).GetAConst() == nil {
		return "", false // missing_ok must be a constant
	}
	return constString(unwrapCasts(f.Args[0]))
}

// exactCasts are the types a tenant id may be cast to: they do not
// truncate (char, varchar(n), name) or fold many ids into few (bool). uuid
// and the integers still read several spellings as one value ('7' and
// '07'), which is why configuration validation refuses two spellings of
// one value.
var exactCasts = map[string]bool{"text": true, "varchar": true, "uuid": true, "int2": true, "int4": true, "int8": true}

// castType names a cast's target type as pg_catalog does ("int4" for
// integer), or returns "" for anything but a built-in type without
// modifiers or array bounds.
func castType(tc *pg_query.TypeCast) string {
	t := tc.TypeName
	names, ok := stringList(t.GetNames())
	if !ok || len(t.Typmods) > 0 || len(t.ArrayBounds) > 0 || t.Setof || t.PctType || len(names) > 2 ||
		len(names) == 2 && names[0] != "pg_catalog" {
		return ""
	}
	return names[len(names)-1]
}

func unwrapCasts(n *pg_query.Node) *pg_query.Node {
	for n.GetTypeCast() != nil {
		n = n.GetTypeCast().Arg
	}
	return n
}
