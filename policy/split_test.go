package policy

import (
	"slices"
	"testing"
)

func TestStmtsAndClasses(t *testing.T) {
	const (
		nt = NeedsTenant
		et = EndsTxn
	)
	tests := []struct {
		name string
		sql  string
		want []Stmt
	}{
		{"empty", "", nil},
		{"comment only", "-- ping", nil},
		{"block comment and semicolons", "/* x */ ;; ", nil},
		{"one", "SELECT 1", []Stmt{{0, 8, nt}}},
		{"trailing semicolon", "SELECT 1;", []Stmt{{0, 8, nt}}},
		{"leading whitespace", "  SELECT 1; SELECT 2", []Stmt{{0, 10, nt}, {11, 20, nt}}},
		{"comments and empty statement", "-- c\nSELECT 1;;SELECT 2 ; ", []Stmt{{0, 13, nt}, {15, 24, nt}}},
		{"leading semicolon", ";select 1", []Stmt{{1, 9, nt}}},
		{"trailing comment", "select 1 -- c", []Stmt{{0, 13, nt}}},
		{"chain", "BEGIN; INSERT INTO orders (amount) VALUES (1); COMMIT AND CHAIN; SELECT 1; ROLLBACK",
			[]Stmt{{0, 5, 0}, {6, 45, nt}, {46, 63, et}, {64, 73, nt}, {74, 83, et}}},
		{"savepoints", "SAVEPOINT a; RELEASE a; ROLLBACK TO a; ROLLBACK TO SAVEPOINT a",
			[]Stmt{{0, 11, nt}, {12, 22, 0}, {23, 37, 0}, {38, 62, 0}}},
		{"transaction spellings", "START TRANSACTION; END; begin; ABORT; COMMIT; ROLLBACK AND CHAIN",
			[]Stmt{{0, 17, 0}, {18, 22, et}, {23, 29, 0}, {30, 36, et}, {37, 44, et}, {45, 64, et}}},
		{"set transaction", "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE; SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY; SET LOCAL x.y = 1",
			[]Stmt{{0, 44, 0}, {45, 98, 0}, {99, 117, 0}}},
		{"set show reset", "SET statement_timeout = 5; SHOW TimeZone; RESET statement_timeout; SELECT 1",
			[]Stmt{{0, 25, 0}, {26, 40, 0}, {41, 65, 0}, {66, 75, nt}}},
		{"two-phase", "PREPARE TRANSACTION 'g'; COMMIT PREPARED 'g'", []Stmt{{0, 23, et}, {24, 44, 0}}},
		{"discard", "DISCARD ALL; DISCARD TEMP", []Stmt{{0, 11, et | DropsPrepared}, {12, 25, nt}}},
		{"call", "CALL p()", []Stmt{{0, 8, nt | et}}},
		// EXECUTE may run what a protocol Parse prepared, COMMIT included.
		{"prepare and execute", "PREPARE s AS SELECT 1; EXECUTE s", []Stmt{{0, 21, nt | Prepares}, {22, 32, Unknown}}},
		{"copy in", "COPY t FROM STDIN; COPY t TO STDOUT; COPY t FROM '/x'",
			[]Stmt{{0, 17, nt | CopyIn}, {18, 35, nt}, {36, 53, nt}}},
		{"multibyte", "SELECT 'é'; SELECT 2", []Stmt{{0, 11, nt}, {12, 21, nt}}},
		{"does not parse", "SELEC 1; SELECT 2", []Stmt{{0, 17, Unknown}}},
	}
	e := NewEngine(demoRules(), demoCatalog(t), 0)
	admin := &Session{Admin: true}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, v := e.Check(tt.sql, admin)
			if v != nil {
				t.Fatalf("admin got a violation: %v", v)
			}
			if !slices.Equal(d.Stmts, tt.want) {
				t.Fatalf("Stmts = %+v, want %+v", d.Stmts, tt.want)
			}
			if !parses(tt.sql) {
				return
			}
			// The rewriter inserts a SET LOCAL at each Start: the result
			// must parse into one more statement.
			for i, s := range d.Stmts {
				text := tt.sql[:s.Start] + "SET LOCAL x.y = 'z'; " + tt.sql[s.Start:]
				d2, _ := e.Check(text, admin)
				if !parses(text) || len(d2.Stmts) != len(d.Stmts)+1 {
					t.Errorf("inserting at Stmts[%d].Start=%d: %q does not give %d statements", i, s.Start, text, len(d.Stmts)+1)
				}
			}
		})
	}
}

// TestNULRefused: the parser stops at a NUL byte, so text after one would
// go unchecked; such a text is refused whole.
func TestNULRefused(t *testing.T) {
	e := NewEngine(demoRules(), demoCatalog(t), 0)
	for _, sql := range []string{"SELECT 1\x00 FROM audit_raw", "SELECT 1; \x00SELECT * FROM audit_raw"} {
		d, v := e.Check(sql, &Session{Tenant: "acme"})
		if v == nil || v.Reason != ReasonParseError || v.SQLState != "42601" {
			t.Fatalf("%q: violation %+v, want a parse error", sql, v)
		}
		if len(d.Stmts) != 1 || d.Stmts[0].End != len(sql) {
			t.Fatalf("%q: statements %+v, want one covering the text", sql, d.Stmts)
		}
	}
}
