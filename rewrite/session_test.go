package rewrite

import (
	"encoding/binary"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgmoat/pgmoat/policy"
)

const prefix = "SET LOCAL app.current_tenant_id = 'acme'; "

func newSession() *Session {
	return NewSession(Config{Setting: "app.current_tenant_id", Tenant: "acme", Marker: "m4rk"})
}

func enc(t testing.TB, msgs ...interface{ Encode([]byte) ([]byte, error) }) []byte {
	t.Helper()
	var b []byte
	for _, m := range msgs {
		var err error
		if b, err = m.Encode(b); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

// frames splits a byte stream into whole messages.
func frames(t testing.TB, b []byte) [][]byte {
	t.Helper()
	var out [][]byte
	for len(b) > 0 {
		n := int(binary.BigEndian.Uint32(b[1:])) + 1
		out = append(out, b[:n])
		b = b[n:]
	}
	return out
}

// types is the message types of a stream, e.g. "CPBEC".
func types(t testing.TB, b []byte) string {
	var sb strings.Builder
	for _, f := range frames(t, b) {
		sb.WriteByte(f[0])
	}
	return sb.String()
}

func queryOut(t testing.TB, b []byte) string {
	t.Helper()
	fs := frames(t, b)
	if len(fs) != 1 || fs[0][0] != 'Q' {
		t.Fatalf("want one Query, got %q", types(t, b))
	}
	q, err := QueryText(fs[0])
	if err != nil {
		t.Fatal(err)
	}
	return string(q)
}

// stmts builds a decision for sql from statement texts and classes; each
// statement is located by searching for its text.
func decide(sql string, parts ...any) *policy.Decision {
	d := &policy.Decision{}
	from := 0
	for i := 0; i < len(parts); i += 2 {
		text, class := parts[i].(string), parts[i+1].(policy.Class)
		start := from + strings.Index(sql[from:], text)
		d.Stmts = append(d.Stmts, policy.Stmt{Start: start, End: start + len(text), Class: class})
		from = start + len(text)
	}
	return d
}

const (
	needs = policy.NeedsTenant
	ends  = policy.EndsTxn
)

// reply feeds server messages and returns what the client sees.
func reply(t testing.TB, s *Session, msgs ...interface{ Encode([]byte) ([]byte, error) }) []byte {
	t.Helper()
	var out []byte
	for _, m := range frames(t, enc(t, msgs...)) {
		var err error
		if out, err = s.Reply(out, m); err != nil {
			t.Fatalf("Reply(%q): %v", m[0], err)
		}
	}
	return out
}

func sendQuery(t testing.TB, s *Session, sql string, d *policy.Decision, v *policy.Violation) string {
	t.Helper()
	return queryOut(t, s.Query(nil, enc(t, &pgproto3.Query{String: sql}), sql, d, v))
}

func cc(tag string) *pgproto3.CommandComplete {
	return &pgproto3.CommandComplete{CommandTag: []byte(tag)}
}

func rfq(status byte) *pgproto3.ReadyForQuery { return &pgproto3.ReadyForQuery{TxStatus: status} }

func TestQueryInjection(t *testing.T) {
	tests := []struct {
		name, sql string
		d         *policy.Decision
		want      string
	}{
		{"plain select", "SELECT 1", decide("SELECT 1", "SELECT 1", needs), prefix + "SELECT 1"},
		{"empty", "-- ping", decide("-- ping"), "-- ping"},
		{"begin alone is neutral", "BEGIN", decide("BEGIN", "BEGIN", policy.Class(0)), "BEGIN"},
		{"begin then select", "BEGIN ISOLATION LEVEL SERIALIZABLE; SELECT 1",
			decide("BEGIN ISOLATION LEVEL SERIALIZABLE; SELECT 1", "BEGIN ISOLATION LEVEL SERIALIZABLE", policy.Class(0), " SELECT 1", needs),
			"BEGIN ISOLATION LEVEL SERIALIZABLE;" + prefix + " SELECT 1"},
		{"re-inject after commit", "SELECT 1; COMMIT; SELECT 2",
			decide("SELECT 1; COMMIT; SELECT 2", "SELECT 1", needs, " COMMIT", ends, " SELECT 2", needs),
			prefix + "SELECT 1; COMMIT;" + prefix + " SELECT 2"},
		{"chain", "SELECT 1; COMMIT AND CHAIN; SELECT 2",
			decide("SELECT 1; COMMIT AND CHAIN; SELECT 2", "SELECT 1", needs, " COMMIT AND CHAIN", ends, " SELECT 2", needs),
			prefix + "SELECT 1; COMMIT AND CHAIN;" + prefix + " SELECT 2"},
		{"rollback first stays first", "ROLLBACK; SELECT 1",
			decide("ROLLBACK; SELECT 1", "ROLLBACK", ends, " SELECT 1", needs),
			"ROLLBACK;" + prefix + " SELECT 1"},
		{"savepoint needs the tenant", "SAVEPOINT a", decide("SAVEPOINT a", "SAVEPOINT a", needs), prefix + "SAVEPOINT a"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := sendQuery(t, newSession(), tt.sql, tt.d, nil); got != tt.want {
				t.Errorf("sent %q, want %q", got, tt.want)
			}
		})
	}
}

func TestQueryRepliesSwallowed(t *testing.T) {
	s := newSession()
	sql := "SELECT 1; COMMIT; SELECT 2"
	sendQuery(t, s, sql, decide(sql, "SELECT 1", needs, " COMMIT", ends, " SELECT 2", needs), nil)
	got := reply(t, s,
		cc("SET"), &pgproto3.RowDescription{}, &pgproto3.DataRow{}, cc("SELECT 1"), cc("COMMIT"),
		cc("SET"), &pgproto3.RowDescription{}, &pgproto3.DataRow{}, cc("SELECT 1"), rfq('I'))
	if tt := types(t, got); tt != "TDCCTDCZ" {
		t.Fatalf("client saw %q, want TDCCTDCZ", tt)
	}
	for _, f := range frames(t, got) {
		if f[0] == 'C' && strings.Contains(string(f), "SET") {
			t.Fatal("client saw pgmoat's SET")
		}
	}
}

func TestTenantTrackedAcrossTransaction(t *testing.T) {
	s := newSession()
	if got := sendQuery(t, s, "BEGIN", decide("BEGIN", "BEGIN", policy.Class(0)), nil); got != "BEGIN" {
		t.Fatalf("BEGIN rewritten to %q", got)
	}
	reply(t, s, cc("BEGIN"), rfq('T'))
	if got := sendQuery(t, s, "SELECT 1", decide("SELECT 1", "SELECT 1", needs), nil); got != prefix+"SELECT 1" {
		t.Fatalf("first statement in transaction: %q", got)
	}
	reply(t, s, cc("SET"), cc("SELECT 1"), rfq('T'))
	if got := sendQuery(t, s, "SELECT 2", decide("SELECT 2", "SELECT 2", needs), nil); got != "SELECT 2" {
		t.Fatalf("tenant already set, but sent %q", got)
	}
	reply(t, s, cc("SELECT 1"), rfq('T'))
	sendQuery(t, s, "COMMIT", decide("COMMIT", "COMMIT", ends), nil)
	reply(t, s, cc("COMMIT"), rfq('I'))
	if got := sendQuery(t, s, "SELECT 3", decide("SELECT 3", "SELECT 3", needs), nil); got != prefix+"SELECT 3" {
		t.Fatalf("after COMMIT: %q", got)
	}
}

func TestPipelinedQueriesInjectWhenUnsure(t *testing.T) {
	s := newSession()
	sendQuery(t, s, "BEGIN; SELECT 1", decide("BEGIN; SELECT 1", "BEGIN", policy.Class(0), " SELECT 1", needs), nil)
	// The first Query's outcome is unknown: it may have failed before BEGIN ran.
	if got := sendQuery(t, s, "SELECT 2", decide("SELECT 2", "SELECT 2", needs), nil); got != prefix+"SELECT 2" {
		t.Fatalf("pipelined query not injected: %q", got)
	}
}

func TestErrorPositionShifted(t *testing.T) {
	s := newSession()
	sql := "SELECT x"
	sendQuery(t, s, sql, decide(sql, sql, needs), nil)
	got := reply(t, s, cc("SET"), &pgproto3.ErrorResponse{Severity: "ERROR", Code: "42703", Message: "column x does not exist", Position: int32(len(prefix) + 8)}, rfq('I'))
	fs := frames(t, got)
	var er pgproto3.ErrorResponse
	if err := er.Decode(fs[0][5:]); err != nil {
		t.Fatal(err)
	}
	if er.Position != 8 {
		t.Fatalf("position %d, want 8", er.Position)
	}
}

func TestQueryBlock(t *testing.T) {
	s := newSession()
	sql := "SELECT 1; SELECT * FROM audit_raw; SELECT 3"
	d := decide(sql, "SELECT 1", needs, " SELECT * FROM audit_raw", needs, " SELECT 3", needs)
	v := &policy.Violation{Stmt: 1, SQLState: "42501", Message: "pgmoat: blocked", Pos: strings.Index(sql, "audit_raw")}
	got := sendQuery(t, s, sql, d, v)
	want := prefix + "SELECT 1;SELECT 'pgmoat:m4rk'::pg_catalog.int4"
	if got != want {
		t.Fatalf("sent %q\nwant %q", got, want)
	}
	out := reply(t, s, cc("SET"), &pgproto3.RowDescription{}, &pgproto3.DataRow{}, cc("SELECT 1"),
		&pgproto3.ErrorResponse{Severity: "ERROR", Code: "22P02", Message: `invalid input syntax for type integer: "pgmoat:m4rk"`}, rfq('I'))
	fs := frames(t, out)
	if tt := types(t, out); tt != "TDCEZ" {
		t.Fatalf("client saw %q", tt)
	}
	var er pgproto3.ErrorResponse
	if err := er.Decode(fs[3][5:]); err != nil {
		t.Fatal(err)
	}
	if er.Code != "42501" || er.Message != "pgmoat: blocked" || int(er.Position) != strings.Index(sql, "audit_raw")+1 {
		t.Fatalf("error %+v", er)
	}
}

func TestQueryBlockForwardsOtherErrors(t *testing.T) {
	s := newSession()
	sql := "SELECT * FROM audit_raw"
	v := &policy.Violation{Stmt: 0, SQLState: "42501", Message: "pgmoat: blocked", Pos: -1}
	if got := sendQuery(t, s, sql, decide(sql, sql, needs), v); got != "SELECT 'pgmoat:m4rk'::pg_catalog.int4" {
		t.Fatalf("sent %q", got)
	}
	// In a failed transaction the server refuses everything with 25P02, as
	// it would have refused the client's statement.
	out := reply(t, s, &pgproto3.ErrorResponse{Severity: "ERROR", Code: "25P02", Message: "current transaction is aborted"}, rfq('E'))
	var er pgproto3.ErrorResponse
	if err := er.Decode(frames(t, out)[0][5:]); err != nil || er.Code != "25P02" {
		t.Fatalf("error %+v %v", er, err)
	}
}

// extended encodes one extended-protocol batch.
func extended(t testing.TB, s *Session, msgs ...any) string {
	t.Helper()
	var out []byte
	for _, m := range msgs {
		switch m := m.(type) {
		case parse:
			out = s.Parse(out, enc(t, &pgproto3.Parse{Name: m.name, Query: m.sql}), m.name, decide(m.sql, m.sql, m.class), m.v)
		case interface{ Encode([]byte) ([]byte, error) }:
			var err error
			if out, err = s.Message(out, enc(t, m)); err != nil {
				t.Fatal(err)
			}
		}
	}
	return types(t, out)
}

type parse struct {
	name, sql string
	class     policy.Class
	v         *policy.Violation
}

func TestExtendedInjection(t *testing.T) {
	s := newSession()
	got := extended(t, s, parse{"", "SELECT 1", needs, nil}, &pgproto3.Bind{}, &pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{})
	// Parse Bind Describe [Close Parse Bind Execute Close Close] Execute Sync
	if got != "PBDCPBECES" {
		t.Fatalf("sent %q", got)
	}
	out := reply(t, s,
		&pgproto3.ParseComplete{}, &pgproto3.BindComplete{}, &pgproto3.RowDescription{},
		&pgproto3.CloseComplete{}, &pgproto3.ParseComplete{}, &pgproto3.BindComplete{}, &pgproto3.DataRow{}, cc("SELECT 1"), &pgproto3.CloseComplete{},
		&pgproto3.DataRow{}, cc("SELECT 1"), rfq('I'))
	if tt := types(t, out); tt != "12TDCZ" {
		t.Fatalf("client saw %q, want 12TDCZ", tt)
	}
}

func TestExtendedBeginNotPreceded(t *testing.T) {
	s := newSession()
	got := extended(t, s,
		parse{"", "BEGIN ISOLATION LEVEL SERIALIZABLE", policy.Class(0), nil}, &pgproto3.Bind{}, &pgproto3.Execute{},
		parse{"", "SELECT 1", needs, nil}, &pgproto3.Bind{}, &pgproto3.Execute{},
		parse{"", "COMMIT", ends, nil}, &pgproto3.Bind{}, &pgproto3.Execute{},
		parse{"", "SELECT 2", needs, nil}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Sync{})
	want := "PBE" + "PB" + "CPBEC" + "E" + "PBE" + "PB" + "CPBEC" + "E" + "S"
	if got != want {
		t.Fatalf("sent %q\nwant %q", got, want)
	}
}

func TestNamedStatementClassesMerge(t *testing.T) {
	s := newSession()
	// pgjdbc style: COMMIT prepared as a named statement, reused later.
	extended(t, s, parse{"S_1", "COMMIT", ends, nil}, &pgproto3.Sync{})
	reply(t, s, &pgproto3.ParseComplete{}, rfq('T'))
	// Tenant state is unset (predicted), so the SELECT is injected; after
	// S_1 (COMMIT) the next SELECT needs it again.
	got := extended(t, s,
		parse{"", "SELECT 1", needs, nil}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Bind{PreparedStatement: "S_1"}, &pgproto3.Execute{},
		&pgproto3.Bind{PreparedStatement: "unknown_stmt"}, &pgproto3.Execute{},
		&pgproto3.Bind{PreparedStatement: "unknown_stmt"}, &pgproto3.Execute{},
		&pgproto3.Sync{})
	want := "PB" + "CPBEC" + "E" + "BE" + "B" + "CPBEC" + "E" + "B" + "CPBEC" + "E" + "S"
	if got != want {
		t.Fatalf("sent %q\nwant %q", got, want)
	}
}

func TestExtendedErrorSkipsToSync(t *testing.T) {
	s := newSession()
	extended(t, s, parse{"", "SELECT bad", needs, nil}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
	// The Parse fails: the server skips Bind, the injection and Execute.
	out := reply(t, s, &pgproto3.ErrorResponse{Severity: "ERROR", Code: "42703", Message: "x"}, rfq('I'))
	if tt := types(t, out); tt != "EZ" {
		t.Fatalf("client saw %q", tt)
	}
	if s.q.len() != 0 {
		t.Fatalf("%d replies still expected", s.q.len())
	}
}

func TestExtendedBlockDropsRestOfBatch(t *testing.T) {
	s := newSession()
	v := &policy.Violation{SQLState: "42501", Message: "pgmoat: blocked", Pos: -1}
	got := extended(t, s,
		parse{"", "INSERT INTO orders VALUES (1)", needs, nil}, &pgproto3.Bind{}, &pgproto3.Execute{},
		parse{"", "SELECT * FROM audit_raw", needs, v}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Query{String: "SELECT 1"}, &pgproto3.Sync{})
	// The refused Parse is replaced; what follows it up to Sync is dropped.
	if want := "PB" + "CPBEC" + "E" + "P" + "S"; got != want {
		t.Fatalf("sent %q, want %q", got, want)
	}
	out := reply(t, s,
		&pgproto3.ParseComplete{}, &pgproto3.BindComplete{},
		&pgproto3.CloseComplete{}, &pgproto3.ParseComplete{}, &pgproto3.BindComplete{}, &pgproto3.DataRow{}, cc("SELECT 1"), &pgproto3.CloseComplete{},
		cc("INSERT 0 1"),
		&pgproto3.ErrorResponse{Severity: "ERROR", Code: "22P02", Message: `invalid input syntax for type integer: "pgmoat:m4rk"`},
		rfq('I'))
	if tt := types(t, out); tt != "12CEZ" {
		t.Fatalf("client saw %q", tt)
	}
	var er pgproto3.ErrorResponse
	if err := er.Decode(frames(t, out)[3][5:]); err != nil || er.Code != "42501" {
		t.Fatalf("error %+v %v", er, err)
	}
}

func TestReservedNamesRefused(t *testing.T) {
	s := newSession()
	got := extended(t, s, &pgproto3.Bind{PreparedStatement: "pgmoat_tenant"}, &pgproto3.Execute{}, &pgproto3.Sync{})
	if got != "PS" {
		t.Fatalf("sent %q", got)
	}
}

func TestCopyDataOutsideCopyDropped(t *testing.T) {
	s := newSession()
	sql := "COPY audit_raw FROM STDIN"
	v := &policy.Violation{SQLState: "42501", Message: "pgmoat: blocked", Pos: -1}
	var out []byte
	out = s.Query(out, enc(t, &pgproto3.Query{String: sql}), sql, decide(sql, sql, needs|policy.CopyIn), v)
	for _, m := range []interface{ Encode([]byte) ([]byte, error) }{&pgproto3.CopyData{Data: []byte("1\tx\n")}, &pgproto3.CopyDone{}} {
		var err error
		if out, err = s.Message(out, enc(t, m)); err != nil {
			t.Fatal(err)
		}
	}
	if got := types(t, out); got != "Q" {
		t.Fatalf("sent %q: COPY data of a refused COPY went upstream", got)
	}
}

func TestCopyInAllowed(t *testing.T) {
	s := newSession()
	sql := "COPY tmp FROM STDIN"
	var out []byte
	out = s.Query(out, enc(t, &pgproto3.Query{String: sql}), sql, decide(sql, sql, needs|policy.CopyIn), nil)
	for _, m := range []interface{ Encode([]byte) ([]byte, error) }{&pgproto3.CopyData{Data: []byte("1\n")}, &pgproto3.CopyDone{}} {
		var err error
		if out, err = s.Message(out, enc(t, m)); err != nil {
			t.Fatal(err)
		}
	}
	if got := types(t, out); got != "Qdc" {
		t.Fatalf("sent %q", got)
	}
	got := reply(t, s, cc("SET"), &pgproto3.CopyInResponse{}, cc("COPY 1"), rfq('I'))
	if tt := types(t, got); tt != "GCZ" {
		t.Fatalf("client saw %q", tt)
	}
}

func TestExtendedCopySyncIgnoredDuringCopy(t *testing.T) {
	s := newSession()
	// libpq sends Sync right after Execute of a COPY, then the data, then Sync.
	var out []byte
	out = s.Parse(out, enc(t, &pgproto3.Parse{Query: "COPY tmp FROM STDIN"}), "", decide("COPY tmp FROM STDIN", "COPY tmp FROM STDIN", needs|policy.CopyIn), nil)
	for _, m := range []interface{ Encode([]byte) ([]byte, error) }{&pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{}, &pgproto3.CopyData{Data: []byte("1\n")}, &pgproto3.CopyDone{}, &pgproto3.Sync{}} {
		var err error
		if out, err = s.Message(out, enc(t, m)); err != nil {
			t.Fatal(err)
		}
	}
	got := reply(t, s, &pgproto3.ParseComplete{}, &pgproto3.BindComplete{},
		&pgproto3.CloseComplete{}, &pgproto3.ParseComplete{}, &pgproto3.BindComplete{}, &pgproto3.DataRow{}, cc("SELECT 1"), &pgproto3.CloseComplete{},
		&pgproto3.CopyInResponse{}, cc("COPY 1"), rfq('I'))
	if tt := types(t, got); tt != "12GCZ" {
		t.Fatalf("client saw %q", tt)
	}
	if s.q.len() != 0 {
		t.Fatalf("%d replies still expected", s.q.len())
	}
}

func TestUnexpectedReplyLosesTrack(t *testing.T) {
	s := newSession()
	extended(t, s, parse{"", "SELECT 1", needs, nil}, &pgproto3.Sync{})
	if _, err := s.Reply(nil, enc(t, rfq('I'))); err == nil {
		t.Fatal("ReadyForQuery in reply to Parse accepted")
	}
}

func TestUnshift(t *testing.T) {
	shifts := []shiftAt{{pos: 0, n: 10}, {pos: 20, n: 10}}
	for _, c := range []struct{ in, want int32 }{{11, 1}, {15, 5}, {21, 11}, {25, 11}, {31, 11}, {35, 15}, {5, 1}} {
		if got := unshift(c.in, shifts); got != c.want {
			t.Errorf("unshift(%d) = %d, want %d", c.in, got, c.want)
		}
	}
}

// TestErrorAtSync: a transaction can fail at Sync, its implicit COMMIT
// (deferred constraints, serialization failures); ErrorResponse then
// ReadyForQuery answer the Sync, and the session goes on.
func TestErrorAtSync(t *testing.T) {
	s := newSession()
	extended(t, s, parse{"", "INSERT INTO t VALUES (1)", needs, nil}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
	out := reply(t, s, &pgproto3.ParseComplete{}, &pgproto3.BindComplete{},
		&pgproto3.CloseComplete{}, &pgproto3.ParseComplete{}, &pgproto3.BindComplete{}, &pgproto3.DataRow{}, cc("SELECT 1"), &pgproto3.CloseComplete{},
		cc("INSERT 0 1"),
		&pgproto3.ErrorResponse{Severity: "ERROR", Code: "23505", Message: "duplicate key value"}, rfq('I'))
	if got := types(t, out); got != "12CEZ" {
		t.Fatalf("client saw %q", got)
	}
	if !s.Idle() {
		t.Fatalf("%d replies still expected", s.q.len())
	}
	// The next batch is tracked normally (and pgmoat's statement, whose
	// Parse the server confirmed, is not parsed again).
	if got := extended(t, s, parse{"", "SELECT 1", needs, nil}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{}); got != "PB"+"BEC"+"ES" {
		t.Fatalf("sent %q", got)
	}
}

func TestReservedParseName(t *testing.T) {
	s := newSession()
	got := extended(t, s, parse{injectName, "SELECT 1", needs, nil}, &pgproto3.Sync{})
	if got != "PS" {
		t.Fatalf("sent %q", got)
	}
	out := reply(t, s, &pgproto3.ErrorResponse{Severity: "ERROR", Code: "22P02", Message: `invalid input syntax for type integer: "pgmoat:m4rk"`}, rfq('I'))
	var er pgproto3.ErrorResponse
	if err := er.Decode(frames(t, out)[0][5:]); err != nil || er.Code != "42501" {
		t.Fatalf("error %+v %v", er, err)
	}
}

// TestInjectionStatementKept: pgmoat's set_config statement is parsed once
// the server has confirmed it, and parsed again when it may be gone.
func TestInjectionStatementKept(t *testing.T) {
	sel := func(s *Session) string {
		return extended(t, s, parse{"", "SELECT 1", needs, nil}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
	}
	parsed := []interface{ Encode([]byte) ([]byte, error) }{&pgproto3.ParseComplete{}, &pgproto3.BindComplete{},
		&pgproto3.CloseComplete{}, &pgproto3.ParseComplete{}, &pgproto3.BindComplete{}, &pgproto3.DataRow{}, cc("SELECT 1"), &pgproto3.CloseComplete{},
		&pgproto3.DataRow{}, cc("SELECT 1"), rfq('I')}
	bound := []interface{ Encode([]byte) ([]byte, error) }{&pgproto3.ParseComplete{}, &pgproto3.BindComplete{},
		&pgproto3.BindComplete{}, &pgproto3.DataRow{}, cc("SELECT 1"), &pgproto3.CloseComplete{},
		&pgproto3.DataRow{}, cc("SELECT 1"), rfq('I')}
	const withParse, withoutParse = "PB" + "CPBEC" + "ES", "PB" + "BEC" + "ES"

	t.Run("kept once confirmed", func(t *testing.T) {
		s := newSession()
		if got := sel(s); got != withParse {
			t.Fatalf("first batch sent %q, want %q", got, withParse)
		}
		// Sent before the server confirmed the Parse: parsed again.
		if got := sel(s); got != withParse {
			t.Fatalf("second batch sent %q, want %q", got, withParse)
		}
		reply(t, s, parsed...)
		reply(t, s, parsed...)
		for i := range 2 {
			if got := sel(s); got != withoutParse {
				t.Fatalf("batch %d after confirmation sent %q, want %q", i, got, withoutParse)
			}
			if out := types(t, reply(t, s, bound...)); out != "12DCZ" {
				t.Fatalf("client saw %q", out)
			}
		}
	})
	for _, drop := range []struct {
		name  string
		class policy.Class
	}{{"DISCARD ALL", ends | policy.DropsPrepared}, {"DEALLOCATE ALL", needs | policy.DropsPrepared}, {"EXECUTE unknown", policy.Unknown}} {
		t.Run("parsed again after "+drop.name, func(t *testing.T) {
			s := newSession()
			sel(s)
			reply(t, s, parsed...)
			if got := sendQuery(t, s, drop.name, decide(drop.name, drop.name, drop.class), nil); !strings.HasSuffix(got, drop.name) {
				t.Fatalf("sent %q", got)
			}
			if got := sel(s); got != withParse {
				t.Fatalf("batch after %s sent %q, want %q", drop.name, got, withParse)
			}
		})
	}
	t.Run("a confirmation sent before a drop does not count", func(t *testing.T) {
		s := newSession()
		sel(s) // Parse of pgmoat's statement in flight
		sendQuery(t, s, "DISCARD ALL", decide("DISCARD ALL", "DISCARD ALL", ends|policy.DropsPrepared), nil)
		reply(t, s, parsed...) // confirms a statement DISCARD ALL then drops
		reply(t, s, cc("DISCARD ALL"), rfq('I'))
		if got := sel(s); got != withParse {
			t.Fatalf("sent %q, want %q", got, withParse)
		}
	})
	t.Run("parsed again after an injected message fails", func(t *testing.T) {
		s := newSession()
		sel(s)
		reply(t, s, parsed...)
		if got := sel(s); got != withoutParse {
			t.Fatalf("sent %q, want %q", got, withoutParse)
		}
		// The statement was dropped behind pgmoat's back: its Bind fails.
		out := reply(t, s, &pgproto3.ParseComplete{}, &pgproto3.BindComplete{},
			&pgproto3.ErrorResponse{Severity: "ERROR", Code: "26000", Message: `prepared statement "pgmoat_tenant" does not exist`}, rfq('I'))
		if got := types(t, out); got != "12EZ" {
			t.Fatalf("client saw %q, want the error", got)
		}
		if got := sel(s); got != withParse {
			t.Fatalf("sent %q, want %q", got, withParse)
		}
	})
}
