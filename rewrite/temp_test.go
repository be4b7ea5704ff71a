package rewrite

import (
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/pgmoat/pgmoat/policy"
)

// marked strips the '^' marks from text and returns it with their byte
// offsets: where pg_temp. goes.
func marked(text string) (string, []int) {
	var offs []int
	for {
		i := strings.IndexByte(text, '^')
		if i < 0 {
			return text, offs
		}
		offs = append(offs, i)
		text = text[:i] + text[i+1:]
	}
}

// errorPosition feeds the server's reply with an ErrorResponse at pos
// (after the given messages) and returns the position the client sees.
func errorPosition(t *testing.T, s *Session, pos int32, before ...interface{ Encode([]byte) ([]byte, error) }) int32 {
	t.Helper()
	msgs := append(before, &pgproto3.ErrorResponse{Severity: "ERROR", Code: "42703", Message: "column does not exist", Position: pos}, rfq('I'))
	out := reply(t, s, msgs...)
	for _, f := range frames(t, out) {
		if f[0] == 'E' {
			var er pgproto3.ErrorResponse
			if err := er.Decode(f[5:]); err != nil {
				t.Fatal(err)
			}
			return er.Position
		}
	}
	t.Fatalf("no ErrorResponse in %q", types(t, out))
	return 0
}

func TestQueryTempQualified(t *testing.T) {
	tests := []struct {
		name   string
		marked string // the client's text, ^ where pg_temp. goes
		parts  []any  // statements and classes, for decide
		v      *policy.Violation
		want   string
	}{
		{"one name", "SELECT * FROM ^t", []any{"SELECT * FROM t", needs}, nil,
			prefix + "SELECT * FROM pg_temp.t"},
		{"several statements", "SELECT * FROM ^t JOIN ^u ON true; COMMIT; INSERT INTO o SELECT * FROM ^t",
			[]any{"SELECT * FROM t JOIN u ON true", needs, " COMMIT", ends, " INSERT INTO o SELECT * FROM t", needs}, nil,
			prefix + "SELECT * FROM pg_temp.t JOIN pg_temp.u ON true; COMMIT;" + prefix + " INSERT INTO o SELECT * FROM pg_temp.t"},
		{"quoted", `DROP TABLE ^"t"`, []any{`DROP TABLE "t"`, needs}, nil,
			prefix + `DROP TABLE pg_temp."t"`},
		{"quoted after a keyword", `SELECT * FROM^"t"`, []any{`SELECT * FROM"t"`, needs}, nil,
			prefix + `SELECT * FROM pg_temp."t"`},
		{"refused later statement", "SELECT * FROM ^t; SELECT * FROM audit_raw, ^u",
			[]any{"SELECT * FROM t", needs, " SELECT * FROM audit_raw, u", needs},
			&policy.Violation{Stmt: 1, SQLState: "42501", Message: "pgmoat: blocked", Pos: -1},
			prefix + "SELECT * FROM pg_temp.t;SELECT 'pgmoat:m4rk'::pg_catalog.int4"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sql, offs := marked(tt.marked)
			d := decide(sql, tt.parts...)
			d.TempQualify = offs
			if got := sendQuery(t, newSession(), sql, d, tt.v); got != tt.want {
				t.Fatalf("sent %q\nwant %q", got, tt.want)
			}
		})
	}
}

// TestQueryTempQualifiedTenantSet: with the tenant already set, only the
// names are qualified.
func TestQueryTempQualifiedTenantSet(t *testing.T) {
	s := newSession()
	sendQuery(t, s, "BEGIN; SELECT 1", decide("BEGIN; SELECT 1", "BEGIN", policy.Class(0), " SELECT 1", needs), nil)
	reply(t, s, cc("BEGIN"), cc("SET"), cc("SELECT 1"), rfq('T'))
	sql, offs := marked("SELECT * FROM ^t")
	d := decide(sql, sql, needs)
	d.TempQualify = offs
	if got := sendQuery(t, s, sql, d, nil); got != "SELECT * FROM pg_temp.t" {
		t.Fatalf("sent %q", got)
	}
}

// TestQueryTempErrorPosition: the server reports positions in the text it
// received; the client gets them in its own text.
func TestQueryTempErrorPosition(t *testing.T) {
	sql, offs := marked("SELECT nocol FROM ^t, é, ^u WHERE u.x = 1")
	// Character positions (1-based) in the client's text.
	nocol, tPos, uPos, where := int32(8), int32(19), int32(25), int32(27)
	// The server saw prefix + "SELECT nocol FROM pg_temp.t, é, pg_temp.u WHERE u.x = 1".
	p := int32(len(prefix))
	tests := []struct {
		name      string
		server    int32
		wantShown int32
	}{
		{"before the names", p + nocol, nocol},
		{"at the first inserted pg_temp.", p + tPos, tPos},
		{"inside the first inserted pg_temp.", p + tPos + 3, tPos},
		{"at the first name", p + tPos + 8, tPos},
		{"inside the second inserted pg_temp.", p + 8 + uPos + 7, uPos},
		{"at the second name", p + 8 + uPos + 8, uPos},
		{"after both", p + 16 + where, where},
		{"inside SET LOCAL", 5, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSession()
			d := decide(sql, sql, needs)
			d.TempQualify = offs
			sendQuery(t, s, sql, d, nil)
			if got := errorPosition(t, s, tt.server, cc("SET")); got != tt.wantShown {
				t.Fatalf("client sees position %d, want %d", got, tt.wantShown)
			}
		})
	}
}

// TestQueryTempErrorPositionAfterKeyword: where pgmoat inserts
// " pg_temp." (nine characters), positions move back by nine.
func TestQueryTempErrorPositionAfterKeyword(t *testing.T) {
	s := newSession()
	sql, offs := marked(`SELECT 1 FROM^"t" WHERE nocol`)
	d := decide(sql, sql, needs)
	d.TempQualify = offs
	if got := sendQuery(t, s, sql, d, nil); got != prefix+`SELECT 1 FROM pg_temp."t" WHERE nocol` {
		t.Fatalf("sent %q", got)
	}
	where := int32(strings.Index(sql, "nocol") + 1)
	if got := errorPosition(t, s, int32(len(prefix))+9+where, cc("SET")); got != where {
		t.Fatalf("client sees position %d, want %d", got, where)
	}
}

func TestParseTempQualified(t *testing.T) {
	s := newSession()
	sql, offs := marked("SELECT nocol FROM ^t WHERE id = $1")
	d := decide(sql, sql, needs)
	d.TempQualify = offs
	msg := enc(t, &pgproto3.Parse{Name: "s1", Query: sql, ParameterOIDs: []uint32{23}})
	out := s.Parse(nil, msg, "s1", d, nil)
	fs := frames(t, out)
	if len(fs) != 1 {
		t.Fatalf("sent %q", types(t, out))
	}
	var p pgproto3.Parse
	if err := p.Decode(fs[0][5:]); err != nil {
		t.Fatal(err)
	}
	if p.Name != "s1" || p.Query != "SELECT nocol FROM pg_temp.t WHERE id = $1" || len(p.ParameterOIDs) != 1 || p.ParameterOIDs[0] != 23 {
		t.Fatalf("sent %+v", p)
	}
	// Errors at Parse time (parse analysis) get the client's position.
	for _, c := range []struct{ server, want int32 }{{8, 8}, {27, 19}, {22, 19}, {35, 27}} {
		s := newSession()
		s.Parse(nil, msg, "s1", d, nil)
		if _, err := s.Message(nil, enc(t, &pgproto3.Sync{})); err != nil {
			t.Fatal(err)
		}
		if got := errorPosition(t, s, c.server); got != c.want {
			t.Errorf("server position %d: client sees %d, want %d", c.server, got, c.want)
		}
	}
}

// TestParseWithoutTempUnchanged: a Parse with nothing to qualify is
// forwarded as the client sent it.
func TestParseWithoutTempUnchanged(t *testing.T) {
	s := newSession()
	sql := "SELECT * FROM orders"
	msg := enc(t, &pgproto3.Parse{Query: sql})
	if out := s.Parse(nil, msg, "", decide(sql, sql, needs), nil); string(out) != string(msg) {
		t.Fatalf("sent %q, want %q", out, msg)
	}
}
