package policy

import (
	"fmt"
	"strings"
	"testing"
)

// ormSelect is the kind of text an ORM sends again and again: a cache hit.
const ormSelect = `SELECT "orders"."id", "orders"."amount", "orders"."status", "customers"."name", "customers"."email", "plans"."name" ` +
	`FROM "orders" INNER JOIN "customers" ON "customers"."id" = "orders"."customer_id" ` +
	`LEFT OUTER JOIN "plans" ON "plans"."id" = "customers"."plan_id" ` +
	`WHERE "orders"."status" = $1 AND "orders"."created_at" > $2 ORDER BY "orders"."id" DESC LIMIT $3 OFFSET $4`

// missTexts are texts that are analysed on every Check; %d makes each
// iteration's text unique.
var missTexts = []struct {
	name string
	gen  func(i int) string
}{
	{"short", func(i int) string { return fmt.Sprintf("SELECT id, amount FROM orders WHERE id = %d", i) }},
	{"join3_subquery", func(i int) string {
		return fmt.Sprintf("SELECT o.id, c.name, p.name FROM orders o JOIN customers c ON c.id = o.customer_id "+
			"JOIN plans p ON p.id = c.plan_id WHERE o.amount > (SELECT avg(amount) FROM orders o2 WHERE o2.customer_id = c.id) "+
			"AND o.id > %d ORDER BY o.id LIMIT 50", i)
	}},
	{"insert_1000_rows", func(i int) string {
		var sb strings.Builder
		fmt.Fprintf(&sb, "INSERT INTO orders (customer_id, amount, status) VALUES (%d, 0, 'new')", i)
		for j := 1; j < 1000; j++ {
			fmt.Fprintf(&sb, ", (%d, %d.50, 'new')", j, j)
		}
		return sb.String()
	}},
}

// BenchmarkCheck measures Check on the cache-hit path, which runs for
// nearly every statement and must not allocate, and on the miss path, which
// parses and walks the text.
func BenchmarkCheck(b *testing.B) {
	cat := demoCatalog(b)
	sess := &Session{Tenant: "acme"}

	hitEngine := func(b *testing.B) *Engine {
		e := NewEngine(demoRules(), cat, 10000)
		if _, v := e.Check(ormSelect, sess); v != nil {
			b.Fatalf("ormSelect refused: %s", v.Message)
		}
		return e
	}
	b.Run("hit", func(b *testing.B) {
		e := hitEngine(b)
		b.ReportAllocs()
		for b.Loop() {
			e.Check(ormSelect, sess)
		}
	})
	b.Run("hit_parallel", func(b *testing.B) {
		e := hitEngine(b)
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			s := &Session{Tenant: "acme"}
			for pb.Next() {
				e.Check(ormSelect, s)
			}
		})
	})
	for _, m := range missTexts {
		// miss_: a new text of a known shape (inlined parameters), answered
		// by the shape cache; analyze_: a new shape, parsed and walked.
		for _, kind := range []struct {
			prefix string
			cache  int
		}{{"miss_", 10000}, {"analyze_", 0}} {
			b.Run(kind.prefix+m.name, func(b *testing.B) {
				benchMiss(b, NewEngine(demoRules(), cat, kind.cache), m.gen, sess)
			})
		}
	}
}

func benchMiss(b *testing.B, e *Engine, gen func(int) string, sess *Session) {
	if _, v := e.Check(gen(-1), sess); v != nil {
		b.Fatalf("refused: %s", v.Message)
	}
	// Texts are made before the clock starts, so that only Check's own
	// allocations are reported.
	texts := make([]string, b.N)
	for i := range texts {
		texts[i] = gen(i)
	}
	b.SetBytes(int64(len(texts[0])))
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		e.Check(texts[i], sess)
	}
}

// BenchmarkParse measures pg_query's parse alone on the miss texts of
// BenchmarkCheck: the rest of a miss is pgmoat's own analysis.
func BenchmarkParse(b *testing.B) {
	for _, m := range missTexts {
		b.Run(m.name, func(b *testing.B) {
			sql := m.gen(0)
			b.SetBytes(int64(len(sql)))
			b.ReportAllocs()
			for b.Loop() {
				if !parses(sql) {
					b.Fatal("does not parse")
				}
			}
		})
	}
}

// TestCheckCacheHitDoesNotAllocate pins the documented contract of Check:
// a cache hit does not allocate, whatever the session.
func TestCheckCacheHitDoesNotAllocate(t *testing.T) {
	e := NewEngine(demoRules(), demoCatalog(t), 100)
	sessions := []struct {
		name string
		s    *Session
	}{
		{"tenant", &Session{Tenant: "acme"}},
		{"read-only", &Session{Tenant: "acme", ReadOnly: true}},
		{"temp tables", &Session{Tenant: "acme", TempTables: map[string]struct{}{"tmp": {}}}},
		{"nil", nil},
	}
	texts := []string{ormSelect, "SELECT * FROM audit_raw", "INSERT INTO tmp SELECT * FROM orders", "SELEC 1"}
	for _, ss := range sessions {
		for _, sql := range texts {
			t.Run(ss.name+"/"+sql, func(t *testing.T) {
				e.Check(sql, ss.s) // warm the cache
				// sql is a constant: the string conversion a caller makes
				// from a message buffer is not counted here.
				if n := testing.AllocsPerRun(100, func() { e.Check(sql, ss.s) }); n != 0 {
					t.Fatalf("cache hit allocates %.1f times", n)
				}
			})
		}
	}
}
