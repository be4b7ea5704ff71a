// Package rewrite transforms one client session's message stream so that every
// statement runs with the tenant set, and filters the server's replies so that
// the client sees exactly the replies to its own messages.
//
// It does no I/O: the proxy hands it whole protocol messages and writes what
// it returns. Where the tenant is injected follows the measured PostgreSQL 15
// behaviour recorded in DESIGN.md section 10:
//
//   - The tenant is set, with transaction scope, immediately before the first
//     statement of a transaction that needs it (policy.NeedsTenant), unless the
//     session knows for certain that it is already set. Transaction control is
//     never preceded by an injection, so an injection never lands before the
//     ROLLBACK of a failed transaction or before BEGIN ISOLATION LEVEL.
//   - Simple protocol: "SET LOCAL <setting> = '<tenant>'; " is spliced into the
//     client's own query text, before that statement. The server's extra
//     CommandComplete("SET") is swallowed and error positions are shifted back.
//   - Extended protocol: Bind/Execute/Close of pgmoat's named set_config(...)
//     statement go just before the client's Execute (with its Parse first
//     while the server has not confirmed it); their replies are swallowed.
//     The client's unnamed statement and portal stay untouched.
//   - A refused statement is replaced by a statement that fails on the server
//     with a per-session marker, so that the server aborts exactly as if the
//     client's statement had failed; the marker error is replaced by the
//     policy's error on the way back.
package rewrite

import (
	"fmt"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/pgmoat/pgmoat/policy"
)

const injectName = policy.ReservedPrefix + "tenant"

// Config is what a Session needs to know about its client.
type Config struct {
	Setting string // the tenant setting, e.g. app.current_tenant_id; validated by config
	Tenant  string // the tenant id; validated by config (no quotes)
	// Marker is a random string unique to the session; it identifies the
	// server error raised by pgmoat's own failing statement.
	Marker string
	// OnInject, if set, is called once per tenant injection (metrics).
	OnInject func()
}

// tenantState is what the session knows, at the point where it is sending
// client messages, about the tenant setting of the server's transaction.
type tenantState uint8

const (
	tenantUnknown tenantState = iota // an earlier batch's outcome is not known yet
	tenantUnset                      // certainly not set
	tenantSet                        // certainly set in the current transaction
)

// Session is the rewrite state of one client session. The client-reading and
// the server-reading goroutine may call it concurrently: every method locks.
type Session struct {
	mu  sync.Mutex
	cfg Config

	setLocal string // "SET LOCAL <setting> = '<tenant>'; "
	// Pre-encoded extended-protocol injections: Bind, Execute and Close of
	// the portal of pgmoat's set_config statement, after (in injectParse)
	// Close and Parse of the statement.
	injectParse, injectBind []byte
	failSQL                 string // a statement that fails at parse analysis with the marker

	// prepared: pgmoat's set_config statement exists on the server, so an
	// injection need not parse it again (server CPU on every transaction).
	// It is set when the server confirms a Parse of generation prepGen, and
	// cleared, with prepGen bumped, when the client sends what may drop it
	// (DEALLOCATE ALL, DISCARD ALL) or an injected message fails. A function
	// that deallocates behind pgmoat's back makes the next injection fail,
	// and with it the client's batch; the one after parses again.
	prepared bool
	prepGen  uint32

	tenant tenantState
	status byte // transaction status of the last ReadyForQuery

	// Statement and portal classes. The batch maps are exact for the current
	// batch (if a Bind runs at all, the Parse before it in the same batch
	// succeeded); the session maps merge every class a name has had, because
	// a Parse in an earlier batch may have failed, and are cleared only when
	// the server confirms a Close.
	stmts, batchStmts     map[string]policy.Class
	portals, batchPortals map[string]policy.Class
	inBatch               bool // extended messages sent since the last Sync
	// sqlPrepared: the client used SQL PREPARE, so a statement name may
	// denote a statement pgmoat did not see parsed (PREPARE after
	// DEALLOCATE, or a Parse that failed because PREPARE took the name).
	// From then on every named statement is assumed to need the tenant.
	sqlPrepared bool

	blocked bool // a message of this batch was refused: drop the rest until Sync
	copyIn  bool // the client may be streaming COPY data for an allowed COPY FROM STDIN
	// serverCopy: the server answered CopyInResponse and the client has not
	// ended the COPY yet, so the server ignores Sync.
	serverCopy bool

	q          queue
	discarding bool // the server is skipping messages until Sync
}

// NewSession returns the rewrite state for a new session in status 'I'.
func NewSession(cfg Config) *Session {
	lit := "'" + strings.ReplaceAll(cfg.Tenant, "'", "''") + "'"
	s := &Session{
		cfg:          cfg,
		setLocal:     "SET LOCAL " + cfg.Setting + " = " + lit + "; ",
		failSQL:      "SELECT 'pgmoat:" + cfg.Marker + "'::pg_catalog.int4",
		tenant:       tenantUnset,
		status:       'I',
		stmts:        map[string]policy.Class{},
		batchStmts:   map[string]policy.Class{},
		portals:      map[string]policy.Class{},
		batchPortals: map[string]policy.Class{},
	}
	// The leading Close (of a statement that normally does not exist, which
	// is not an error) clears one whose Parse the server has not confirmed
	// yet, or at all when an error struck after it.
	b := encodeClose(nil, 'S', injectName)
	b = encodeParse(b, injectName, "SELECT pg_catalog.set_config('"+cfg.Setting+"', $1, true)", 25)
	s.injectBind = encodeClose(encodeExecute(encodeBind(nil, injectName, injectName, cfg.Tenant), injectName), 'P', injectName)
	s.injectParse = append(b, s.injectBind...)
	return s
}

// The replies an injection expects.
var (
	injectParseKinds = [...]entryKind{kClose, kParse, kBind, kExecute, kClose}
	injectBindKinds  = [...]entryKind{kBind, kExecute, kClose}
)

// Status is the transaction status of the server's last ReadyForQuery.
func (s *Session) Status() byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status
}

// Skipping reports whether the server will skip the client's next
// extended-protocol message: an earlier message of its batch was refused or
// failed, so everything up to Sync is dropped. The caller need not judge
// such a message.
func (s *Session) Skipping() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.blocked || s.discarding
}

// Idle reports whether the server owes no replies and no transaction is open.
func (s *Session) Idle() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.q.len() == 0 && s.status == 'I'
}

// Query handles a simple Query message whose text the policy analysed as d.
// v is the violation to enforce, or nil. It appends what to send upstream to
// dst and returns it.
func (s *Session) Query(dst, msg []byte, sql string, d *policy.Decision, v *policy.Violation) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.blocked || s.discarding {
		return dst // the server would skip it: an earlier message of the batch failed
	}
	if s.inBatch {
		// A Query ends the implicit transaction of an unsynced extended batch.
		s.tenant = tenantUnknown
	}
	e := s.q.push(entry{kind: kQuery})
	if v == nil && len(d.TempQualify) == 0 && !s.needsInjection(d) {
		dst = append(dst, msg...)
		for _, st := range d.Stmts {
			s.track(st.Class)
		}
	} else {
		dst = s.rewriteQuery(dst, e, sql, d, v)
	}
	s.endBatch(e)
	return dst
}

// needsInjection reports whether some statement of d would run without the
// tenant set.
func (s *Session) needsInjection(d *policy.Decision) bool {
	state := s.tenant
	for _, st := range d.Stmts {
		if st.Class&policy.NeedsTenant != 0 && state != tenantSet {
			return true
		}
		if st.Class&policy.EndsTxn != 0 {
			state = tenantUnset
		}
	}
	return false
}

// track updates the tenant and COPY state after a statement of class c.
func (s *Session) track(c policy.Class) {
	if c&policy.EndsTxn != 0 {
		s.tenant = tenantUnset
	}
	if c&policy.CopyIn != 0 {
		s.copyIn = true
	}
	if c&policy.DropsPrepared != 0 {
		s.unprepare()
	}
	if c&policy.Prepares != 0 && !s.sqlPrepared {
		s.sqlPrepared = true
		for _, m := range []map[string]policy.Class{s.stmts, s.batchStmts, s.portals, s.batchPortals} {
			for k := range m {
				m[k] |= policy.NeedsTenant
			}
		}
	}
}

// rewriteQuery writes the Query with SET LOCAL spliced in where needed,
// pg_temp. before the names of temporary tables (d.TempQualify) and, if v
// is set, everything after the refused statement replaced by the failing
// statement.
func (s *Session) rewriteQuery(dst []byte, e *entry, sql string, d *policy.Decision, v *policy.Violation) []byte {
	dst, at := begin(dst, 'Q')
	sp := splice{text: sql}
	quals := d.TempQualify
	for i, st := range d.Stmts {
		if v != nil && i == v.Stmt {
			// Start is just after the previous statement's semicolon.
			dst = append(dst, sql[sp.from:st.Start]...)
			dst = append(dst, s.failSQL...)
			e.fail = s.failure(v, sql)
			sp.from = len(sql)
			break
		}
		if st.Class&policy.NeedsTenant != 0 && s.tenant != tenantSet {
			dst = sp.insert(dst, e, st.Start, s.setLocal)
			e.ordinals = append(e.ordinals, i+len(e.ordinals))
			s.tenant = tenantSet
			s.injected()
		}
		for ; len(quals) > 0 && quals[0] < st.End; quals = quals[1:] {
			dst = sp.insert(dst, e, quals[0], policy.TempPrefix(sql, quals[0]))
		}
		s.track(st.Class)
	}
	dst = append(dst, sql[sp.from:]...)
	return finish(append(dst, 0), at)
}

// splice copies a query text into a message with insertions, and records
// in the message's entry how they shift the positions the server reports.
type splice struct {
	text  string
	from  int // next byte of text to copy
	shift int // characters inserted so far (insertions are ASCII: bytes too)
}

// insert appends to dst the text up to byte off, then ins.
func (sp *splice) insert(dst []byte, e *entry, off int, ins string) []byte {
	dst = append(dst, sp.text[sp.from:off]...)
	sp.from = off
	e.shifts = append(e.shifts, shiftAt{pos: charPos(sp.text, off) + sp.shift, n: len(ins)})
	sp.shift += len(ins)
	return append(dst, ins...)
}

// Parse handles a Parse message for statement name with query text analysed
// as d; v is the violation to enforce, or nil.
func (s *Session) Parse(dst, msg []byte, name string, d *policy.Decision, v *policy.Violation) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.blocked || s.discarding {
		return dst
	}
	s.inBatch = true
	if v == nil && strings.HasPrefix(name, policy.ReservedPrefix) {
		v = reserved([]byte(name))
	}
	if v != nil {
		// Same name as the client's, so that a refused unnamed Parse drops the
		// previous unnamed statement exactly as a failed one would.
		e := s.push(entry{kind: kParse})
		if e != nil {
			e.fail = s.failure(v, sqlOf(msg))
		}
		s.blocked = true
		return encodeParse(dst, name, s.failSQL)
	}
	c := policy.Unknown
	if len(d.Stmts) == 1 {
		c = d.Stmts[0].Class
	} else if len(d.Stmts) == 0 {
		c = 0 // an empty statement executes as EmptyQueryResponse
	}
	if s.sqlPrepared && name != "" { // PREPARE cannot name the unnamed statement
		c |= policy.NeedsTenant
	}
	s.batchStmts[name] = c
	s.stmts[name] |= c
	e := s.push(entry{kind: kParse})
	if len(d.TempQualify) == 0 {
		return append(dst, msg...)
	}
	return s.qualifyParse(dst, msg, name, e, d.TempQualify)
}

// qualifyParse appends the Parse message msg with pg_temp. inserted into its
// text at the offsets quals, and records the insertions in e so that the
// positions of errors in reply to the Parse point into the client's text.
// The server keeps the rewritten text for the prepared statement: errors
// that a later Bind or Execute reports (re-planning after DDL) carry
// positions in it, which are not corrected.
func (s *Session) qualifyParse(dst, msg []byte, name string, e *entry, quals []int) []byte {
	_, text, err := ParseFields(msg)
	if err != nil {
		// The caller got the text with ParseFields, so this cannot
		// happen; never forward the names unqualified.
		e.fail = s.failure(&policy.Violation{Reason: policy.ReasonProtocol, Message: "pgmoat: invalid Parse message",
			SQLState: "08P01", Pos: -1}, "")
		s.blocked = true
		return encodeParse(dst, name, s.failSQL)
	}
	q := string(text)
	dst, at := begin(dst, 'P')
	dst = append(append(dst, name...), 0)
	sp := splice{text: q}
	for _, off := range quals {
		dst = sp.insert(dst, e, off, policy.TempPrefix(q, off))
	}
	dst = append(append(dst, q[sp.from:]...), 0)
	dst = append(dst, msg[5+len(name)+1+len(q)+1:]...) // parameter types
	return finish(dst, at)
}

// FunctionCall handles a FunctionCall message; v refuses it (tenants may not
// call functions by OID: the policy cannot see what runs).
func (s *Session) FunctionCall(dst, msg []byte, v *policy.Violation) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.blocked || s.discarding {
		return dst
	}
	if v == nil {
		e := s.q.push(entry{kind: kQuery})
		s.endBatch(e)
		return append(dst, msg...)
	}
	// A Query behaves like a FunctionCall: skipped after an extended-protocol
	// error, else answered with an error and ReadyForQuery.
	e := s.q.push(entry{kind: kQuery})
	e.fail = s.failure(v, "")
	s.endBatch(e)
	return encodeQuery(dst, s.failSQL)
}

// Message handles every other client message: Bind, Describe, Execute,
// Close, Sync, Flush and COPY data. A message that does not parse returns an
// error: the caller closes the connection (08P01).
func (s *Session) Message(dst, msg []byte) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch msg[0] {
	case 'S': // Sync
		if s.copyIn && s.serverCopy {
			return append(dst, msg...), nil // ignored by the server during COPY
		}
		s.blocked, s.discarding = false, false
		e := s.q.push(entry{kind: kSync, inCopy: s.copyIn})
		s.endBatch(e)
		return append(dst, msg...), nil
	case 'H': // Flush: no reply
		return append(dst, msg...), nil
	case 'd', 'c', 'f': // CopyData, CopyDone, CopyFail
		if !s.copyIn {
			// Outside COPY the server ignores them (a refused COPY's data).
			return dst, nil
		}
		if msg[0] != 'd' {
			s.copyIn, s.serverCopy = false, false
			s.q.push(entry{kind: kCopyEnd})
		}
		return append(dst, msg...), nil
	}
	if s.blocked || s.discarding {
		return dst, nil // the server would skip it
	}
	s.inBatch = true
	switch msg[0] {
	case 'B':
		portal, stmt, err := bindNames(msg)
		if err != nil {
			return dst, err
		}
		if v := reserved(portal, stmt); v != nil {
			return s.refuse(dst, v), nil
		}
		c, ok := s.batchStmts[string(stmt)]
		if !ok {
			c, ok = s.stmts[string(stmt)]
		}
		if !ok {
			c = policy.Unknown
		}
		s.batchPortals[string(portal)] = c
		s.portals[string(portal)] |= c
		s.push(entry{kind: kBind})
	case 'E':
		portal, err := executePortal(msg)
		if err != nil {
			return dst, err
		}
		if v := reserved(portal); v != nil {
			return s.refuse(dst, v), nil
		}
		c, ok := s.batchPortals[string(portal)]
		if !ok {
			c, ok = s.portals[string(portal)]
		}
		if !ok {
			c = policy.Unknown
		}
		if c&policy.NeedsTenant != 0 && s.tenant != tenantSet {
			dst = s.inject(dst)
		}
		s.track(c)
		s.push(entry{kind: kExecute})
	case 'D':
		kind, name, err := targetName(msg)
		if err != nil {
			return dst, err
		}
		if v := reserved(name); v != nil {
			return s.refuse(dst, v), nil
		}
		s.push(entry{kind: kDescribe, target: kind})
	case 'C':
		kind, name, err := targetName(msg)
		if err != nil {
			return dst, err
		}
		if v := reserved(name); v != nil {
			return s.refuse(dst, v), nil
		}
		s.push(entry{kind: kClose, target: kind, name: string(name)})
	default:
		return dst, fmt.Errorf("%w: unexpected message type %q", errMalformed, msg[0])
	}
	return append(dst, msg...), nil
}

// inject appends the extended-protocol injection of the tenant.
func (s *Session) inject(dst []byte) []byte {
	if s.prepared {
		dst = append(dst, s.injectBind...)
		for _, k := range injectBindKinds {
			s.push(entry{kind: k, injected: true})
		}
	} else {
		dst = append(dst, s.injectParse...)
		for _, k := range injectParseKinds {
			s.push(entry{kind: k, injected: true, gen: s.prepGen})
		}
	}
	s.tenant = tenantSet
	s.injected()
	return dst
}

// unprepare records that pgmoat's statement may no longer exist.
func (s *Session) unprepare() {
	s.prepared = false
	s.prepGen++
}

// refuse sends the failing statement in place of an extended-protocol
// message and drops the rest of the batch.
func (s *Session) refuse(dst []byte, v *policy.Violation) []byte {
	if e := s.push(entry{kind: kParse}); e != nil {
		e.fail = s.failure(v, "")
	}
	s.blocked = true
	return encodeParse(dst, injectName, s.failSQL)
}

// endBatch is called after a message that the server answers with
// ReadyForQuery (Sync, Query, FunctionCall): until that reply arrives, the
// tenant state of what follows is not known.
func (s *Session) endBatch(e *entry) {
	e.predicted = s.tenant
	s.tenant = tenantUnknown
	s.inBatch = false
	clear(s.batchStmts)
	clear(s.batchPortals)
}

// push enqueues the expected reply of a message sent upstream. While the
// server is skipping until Sync, only Sync is answered.
func (s *Session) push(e entry) *entry {
	if s.discarding {
		return nil
	}
	return s.q.push(e)
}

func (s *Session) injected() {
	if s.cfg.OnInject != nil {
		s.cfg.OnInject()
	}
}

// failure is the client's error for v; Pos becomes a 1-based character
// position in sql.
func (s *Session) failure(v *policy.Violation, sql string) *failure {
	f := &failure{v: v}
	if v.Pos >= 0 && v.Pos <= len(sql) {
		f.position = int32(charPos(sql, v.Pos) + 1)
	}
	return f
}

// reserved refuses client use of pgmoat's own statement and portal names.
func reserved(names ...[]byte) *policy.Violation {
	for _, n := range names {
		if strings.HasPrefix(string(n), policy.ReservedPrefix) {
			return &policy.Violation{
				Reason:   policy.ReasonReservedName,
				Object:   string(n),
				Message:  fmt.Sprintf("pgmoat: the name %q is reserved for pgmoat", n),
				SQLState: "42501",
				Pos:      -1,
			}
		}
	}
	return nil
}

// charPos converts a byte offset in sql to a character count, which is what
// ErrorResponse positions count (the client encoding is UTF-8).
func charPos(sql string, off int) int {
	return utf8.RuneCountInString(sql[:off])
}

func sqlOf(parse []byte) string {
	_, q, err := ParseFields(parse)
	if err != nil {
		return ""
	}
	return string(q)
}
