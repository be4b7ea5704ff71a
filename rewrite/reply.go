package rewrite

import (
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"
)

// ErrLostTrack means a server reply did not fit what pgmoat expected. The
// session cannot know which replies to swallow any more and must be closed
// (fail closed).
var ErrLostTrack = errors.New("pgmoat lost track of the protocol state")

// Reply handles one server message (whole, header included) and appends to
// dst what the client should see: the message unchanged, nothing (a reply to
// pgmoat's own message), or a corrected ErrorResponse.
func (s *Session) Reply(dst, msg []byte) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	typ := msg[0]
	if typ == 'S' || typ == 'A' { // ParameterStatus, NotificationResponse
		return append(dst, msg...), nil
	}
	e := s.front()
	if e == nil {
		if typ == 'E' || typ == 'N' { // a FATAL at server shutdown, a notice
			return append(dst, msg...), nil
		}
		return dst, fmt.Errorf("%w: %q with no reply pending", ErrLostTrack, typ)
	}
	if typ == 'N' {
		if e.injected {
			return dst, nil
		}
		return append(dst, msg...), nil
	}
	if e.kind == kQuery {
		return s.queryReply(dst, msg, e)
	}
	if typ == 'E' {
		if e.kind == kSync {
			// The transaction failed at its implicit COMMIT (a deferred
			// constraint, a serialization failure): ReadyForQuery follows.
			return s.clientError(dst, msg, e)
		}
		return s.extendedError(dst, msg, e)
	}
	done := false
	switch e.kind {
	case kParse:
		done = typ == '1'
		if done && e.injected && e.gen == s.prepGen {
			s.prepared = true
		}
	case kBind:
		done = typ == '2'
	case kDescribe:
		done = typ == 'T' || typ == 'n'
		if !done && !(typ == 't' && e.target == 'S') {
			return dst, s.lost(e, typ)
		}
	case kExecute:
		switch typ {
		case 'C', 'I', 's': // CommandComplete, EmptyQueryResponse, PortalSuspended
			done = true
		case 'G': // CopyInResponse
			s.serverEntersCopy()
		case 'D', 'H', 'W', 'd', 'c': // rows, COPY out
		default:
			return dst, s.lost(e, typ)
		}
	case kClose:
		done = typ == '3'
		if done {
			s.forget(e)
		}
	case kSync:
		done = typ == 'Z'
		if done {
			s.readyForQuery(e, msg)
		}
	}
	if !done && (e.kind == kParse || e.kind == kBind || e.kind == kClose || e.kind == kSync) {
		return dst, s.lost(e, typ)
	}
	if !e.injected {
		dst = append(dst, msg...)
	}
	if done {
		s.q.pop()
	}
	return dst, nil
}

// front returns the oldest expected reply, dropping COPY end markers that no
// longer matter.
func (s *Session) front() *entry {
	for {
		e := s.q.front()
		if e == nil || e.kind != kCopyEnd {
			return e
		}
		s.q.pop()
	}
}

func (s *Session) lost(e *entry, typ byte) error {
	return fmt.Errorf("%w: %q in reply to message kind %d", ErrLostTrack, typ, e.kind)
}

// queryReply handles a reply within a simple Query (or FunctionCall): results
// of each statement, at most one error, then ReadyForQuery.
func (s *Session) queryReply(dst, msg []byte, e *entry) ([]byte, error) {
	switch msg[0] {
	case 'Z':
		s.readyForQuery(e, msg)
		s.q.pop()
		return append(dst, msg...), nil
	case 'E':
		return s.clientError(dst, msg, e)
	case 'C':
		ord := e.done
		e.done++
		for _, o := range e.ordinals {
			if o == ord {
				return dst, nil // CommandComplete("SET") of pgmoat's SET LOCAL
			}
		}
	case 'G':
		s.serverEntersCopy()
	case 'T', 'D', 'I', 'H', 'W', 'd', 'c', 'V':
	default:
		return dst, s.lost(e, msg[0])
	}
	return append(dst, msg...), nil
}

// extendedError handles an ErrorResponse to an extended-protocol message:
// the server now skips everything up to the next Sync, which answers alone.
func (s *Session) extendedError(dst, msg []byte, e *entry) ([]byte, error) {
	if e.injected {
		s.unprepare() // perhaps the statement was gone: parse it again
	}
	dst, err := s.clientError(dst, msg, e)
	if err != nil {
		return dst, err
	}
	s.q.pop()
	for f := s.q.front(); f != nil && f.kind != kSync; f = s.q.front() {
		s.q.pop()
	}
	if s.q.len() == 0 {
		s.discarding = true
	}
	return dst, nil
}

// clientError appends the ErrorResponse the client should see: pgmoat's own
// error for its failing statement, or the server's with the position moved
// back over text pgmoat inserted. Errors of injected messages reach the
// client too: its batch failed and it must know.
func (s *Session) clientError(dst, msg []byte, e *entry) ([]byte, error) {
	if e.fail == nil && len(e.shifts) == 0 {
		return append(dst, msg...), nil
	}
	var er pgproto3.ErrorResponse
	if err := er.Decode(msg[5:]); err != nil {
		return dst, fmt.Errorf("%w: decode ErrorResponse: %v", ErrLostTrack, err)
	}
	if f := e.fail; f != nil && er.Code == "22P02" && strings.Contains(er.Message, s.cfg.Marker) {
		er = pgproto3.ErrorResponse{
			Severity:            "ERROR",
			SeverityUnlocalized: "ERROR",
			Code:                f.v.SQLState,
			Message:             f.v.Message,
			Hint:                f.v.Hint,
			Position:            f.position,
		}
	} else if er.Position > 0 {
		er.Position = unshift(er.Position, e.shifts)
	}
	return er.Encode(dst)
}

// unshift maps a 1-based character position in the rewritten text back to
// the client's text.
func unshift(p int32, shifts []shiftAt) int32 {
	total := 0
	for _, sh := range shifts {
		switch {
		case int(p)-1 >= sh.pos+sh.n:
			total += sh.n
		case int(p)-1 >= sh.pos: // inside pgmoat's own text
			return int32(sh.pos + 1 - total)
		default:
			return p - int32(total)
		}
	}
	return p - int32(total)
}

// readyForQuery records the transaction status and, if this answers the last
// outstanding batch and nothing sent since changed it, confirms the tenant
// state the batch predicted.
func (s *Session) readyForQuery(e *entry, msg []byte) {
	if len(msg) < 6 {
		return
	}
	s.status = msg[5]
	if s.status == 'I' {
		clear(s.portals) // portals end with the transaction
	}
	if s.tenant != tenantUnknown {
		return
	}
	for i := 1; i < s.q.len(); i++ {
		if k := s.q.at(i).kind; k == kSync || k == kQuery {
			return // a later batch is still in flight
		}
	}
	if s.status == 'T' {
		s.tenant = e.predicted
	} else {
		s.tenant = tenantUnset
	}
}

// serverEntersCopy handles CopyInResponse: the server now ignores Sync until
// the client's CopyDone/CopyFail, so Syncs sent in between get no reply.
func (s *Session) serverEntersCopy() {
	for i := 1; i < s.q.len(); {
		f := s.q.at(i)
		if f.kind == kCopyEnd {
			return
		}
		if f.kind == kSync && f.inCopy {
			s.q.removeAt(i)
			continue
		}
		i++
	}
	s.serverCopy = true
}

// forget drops a statement or portal the server confirmed closed; a later
// use of the name is then treated as unknown.
func (s *Session) forget(e *entry) {
	if e.injected {
		return
	}
	if e.target == 'S' {
		delete(s.stmts, e.name)
	} else {
		delete(s.portals, e.name)
	}
}
