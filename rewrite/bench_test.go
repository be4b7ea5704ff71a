package rewrite

import (
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// round is one client request and the server's replies to what the session
// sends upstream for it, as the relay would pass them.
type round struct {
	send    func(s *Session, dst []byte) ([]byte, error)
	replies [][]byte
	// upstream and client are the message types the two sides should see.
	upstream, client string
}

// run plays r on s and returns the messages sent upstream and to the
// client, appended to the reused buffers up and down.
func (r *round) run(s *Session, up, down []byte) ([]byte, []byte, error) {
	up, err := r.send(s, up[:0])
	if err != nil {
		return up, down, err
	}
	down = down[:0]
	for _, m := range r.replies {
		if down, err = s.Reply(down, m); err != nil {
			return up, down, err
		}
	}
	return up, down, nil
}

// benchRound checks one round of r on s, then measures it. The server ends
// each round idle, so every round needs the tenant again: the common
// autocommit path, in its steady state, where pgmoat's set_config statement
// is prepared.
func benchRound(b *testing.B, s *Session, r *round) {
	s.prepared = true
	up, down, err := r.run(s, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	if got := types(b, up); got != r.upstream {
		b.Fatalf("sent upstream %q, want %q", got, r.upstream)
	}
	if got := types(b, down); got != r.client {
		b.Fatalf("client saw %q, want %q", got, r.client)
	}
	b.ReportAllocs()
	for b.Loop() {
		if up, down, err = r.run(s, up, down); err != nil {
			b.Fatal(err)
		}
	}
}

const benchSQL = `SELECT "orders"."id", "orders"."amount", "orders"."status" FROM "orders" WHERE "orders"."id" = $1`

// BenchmarkSession measures the rewrite of the hot paths, a request and its
// replies, with the policy's Decision given (a cache hit).
func BenchmarkSession(b *testing.B) {
	row := &pgproto3.DataRow{Values: [][]byte{[]byte("42"), []byte("19.99"), []byte("paid")}}
	desc := &pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{
		{Name: []byte("id"), DataTypeOID: 20, DataTypeSize: 8, TypeModifier: -1},
		{Name: []byte("amount"), DataTypeOID: 1700, DataTypeSize: -1, TypeModifier: -1},
		{Name: []byte("status"), DataTypeOID: 25, DataTypeSize: -1, TypeModifier: -1},
	}}
	// Replies to pgmoat's injected Bind/Execute/Close.
	injected := []interface{ Encode([]byte) ([]byte, error) }{
		&pgproto3.BindComplete{}, &pgproto3.DataRow{Values: [][]byte{[]byte("acme")}}, cc("SELECT 1"), &pgproto3.CloseComplete{},
	}

	b.Run("simple_query", func(b *testing.B) {
		sql := `SELECT "orders"."id", "orders"."amount", "orders"."status" FROM "orders" WHERE "orders"."id" = 42`
		msg := enc(b, &pgproto3.Query{String: sql})
		d := decide(sql, sql, needs)
		benchRound(b, newSession(), &round{
			send: func(s *Session, dst []byte) ([]byte, error) {
				return s.Query(dst, msg, sql, d, nil), nil
			},
			replies:  frames(b, enc(b, cc("SET"), desc, row, cc("SELECT 1"), rfq('I'))),
			upstream: "Q",
			client:   "TDCZ",
		})
	})

	b.Run("extended_parse_bind_execute_sync", func(b *testing.B) {
		parse := enc(b, &pgproto3.Parse{Query: benchSQL})
		rest := frames(b, enc(b, &pgproto3.Bind{Parameters: [][]byte{[]byte("42")}}, &pgproto3.Execute{}, &pgproto3.Sync{}))
		d := decide(benchSQL, benchSQL, needs)
		replies := append([]interface{ Encode([]byte) ([]byte, error) }{&pgproto3.ParseComplete{}, &pgproto3.BindComplete{}}, injected...)
		benchRound(b, newSession(), &round{
			send: func(s *Session, dst []byte) ([]byte, error) {
				dst = s.Parse(dst, parse, "", d, nil)
				return sendAll(s, dst, rest)
			},
			replies:  frames(b, enc(b, append(replies, row, cc("SELECT 1"), rfq('I'))...)),
			upstream: "PB" + "BEC" + "ES",
			client:   "12DCZ",
		})
	})

	// pgx's default: the statement is prepared once by name, then each
	// query is Bind/Describe/Execute/Sync.
	b.Run("extended_prepared_bind_execute_sync", func(b *testing.B) {
		s := newSession()
		if _, err := sendAll(s, s.Parse(nil, enc(b, &pgproto3.Parse{Name: "stmtcache_1", Query: benchSQL}), "stmtcache_1",
			decide(benchSQL, benchSQL, needs), nil), frames(b, enc(b, &pgproto3.Sync{}))); err != nil {
			b.Fatal(err)
		}
		if _, err := replyAll(s, frames(b, enc(b, &pgproto3.ParseComplete{}, rfq('I')))); err != nil {
			b.Fatal(err)
		}
		msgs := frames(b, enc(b, &pgproto3.Bind{PreparedStatement: "stmtcache_1", Parameters: [][]byte{[]byte("42")}},
			&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{}))
		replies := append([]interface{ Encode([]byte) ([]byte, error) }{&pgproto3.BindComplete{}, desc}, injected...)
		benchRound(b, s, &round{
			send: func(s *Session, dst []byte) ([]byte, error) {
				return sendAll(s, dst, msgs)
			},
			replies:  frames(b, enc(b, append(replies, row, cc("SELECT 1"), rfq('I'))...)),
			upstream: "BD" + "BEC" + "ES",
			client:   "2TDCZ",
		})
	})
}

// sendAll passes client messages other than Query and Parse to s.
func sendAll(s *Session, dst []byte, msgs [][]byte) ([]byte, error) {
	var err error
	for _, m := range msgs {
		if dst, err = s.Message(dst, m); err != nil {
			return dst, err
		}
	}
	return dst, nil
}

func replyAll(s *Session, msgs [][]byte) ([]byte, error) {
	var out []byte
	var err error
	for _, m := range msgs {
		if out, err = s.Reply(out, m); err != nil {
			return out, err
		}
	}
	return out, nil
}
