package policy

import (
	"bufio"
	"fmt"
	"os"
	"strings"
	"testing"
)

// corpusCase is one line of testdata/corpus.txt.
type corpusCase struct {
	line   int
	sql    string
	allow  bool
	reason Reason // when !allow
	sess   Session
}

func (c corpusCase) name() string {
	n := c.sql
	if len(n) > 60 {
		n = n[:60]
	}
	return fmt.Sprintf("%d:%s", c.line, n)
}

// loadCorpus reads testdata/corpus.txt (format described at its top).
func loadCorpus(t testing.TB) []corpusCase {
	t.Helper()
	f, err := os.Open("testdata/corpus.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var cases []corpusCase
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if strings.HasPrefix(line, "#") || strings.TrimSpace(line) == "" {
			continue
		}
		head, sql, ok := strings.Cut(line, "\t")
		if !ok {
			t.Fatalf("corpus.txt:%d: no tab", n)
		}
		c := corpusCase{line: n, sql: strings.ReplaceAll(sql, `\n`, "\n"), sess: Session{Tenant: "acme"}}
		fields := strings.Fields(head)
		if len(fields) == 0 {
			t.Fatalf("corpus.txt:%d: no expectation", n)
		}
		switch exp := fields[0]; {
		case exp == "allow":
			c.allow = true
		case strings.HasPrefix(exp, "block:"):
			c.reason = Reason(strings.TrimPrefix(exp, "block:"))
		default:
			t.Fatalf("corpus.txt:%d: bad expectation %q", n, exp)
		}
		for _, opt := range fields[1:] {
			switch {
			case opt == "ro":
				c.sess.ReadOnly = true
			case opt == "admin":
				c.sess.Admin = true
			case strings.HasPrefix(opt, "temp="):
				c.sess.TempTables = map[string]struct{}{}
				for _, name := range strings.Split(strings.TrimPrefix(opt, "temp="), ",") {
					c.sess.TempTables[name] = struct{}{}
				}
			default:
				t.Fatalf("corpus.txt:%d: bad option %q", n, opt)
			}
		}
		cases = append(cases, c)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return cases
}

func TestCorpus(t *testing.T) {
	cases := loadCorpus(t)
	if len(cases) < 200 {
		t.Fatalf("corpus has %d cases, want at least 200", len(cases))
	}
	e := NewEngine(demoRules(), demoCatalog(t), 1000)
	for _, c := range cases {
		t.Run(c.name(), func(t *testing.T) {
			// Twice: the second Check is a cache hit and must agree.
			for pass := 0; pass < 2; pass++ {
				d, v := e.Check(c.sql, &c.sess)
				if d == nil {
					t.Fatal("nil Decision")
				}
				if c.allow {
					if v != nil {
						t.Fatalf("pass %d: refused (%s): %s", pass, v.Reason, v.Message)
					}
					continue
				}
				if v == nil {
					t.Fatalf("pass %d: allowed, want %s", pass, c.reason)
				}
				if v.Reason != c.reason {
					t.Fatalf("pass %d: reason %s (%s), want %s", pass, v.Reason, v.Message, c.reason)
				}
				checkViolation(t, c.sql, d, v)
			}
		})
	}
}

// checkViolation checks the invariants of every violation.
func checkViolation(t *testing.T, sql string, d *Decision, v *Violation) {
	t.Helper()
	if !strings.HasPrefix(v.Message, "pgmoat: ") || strings.Contains(v.Message, "\n") {
		t.Errorf("message %q: want one line starting with \"pgmoat: \"", v.Message)
	}
	// A refusal says what was touched (issue 3, item 13).
	norm := strings.NewReplacer("_", " ").Replace
	if v.Object != "" && !strings.Contains(norm(strings.ToLower(v.Message)), norm(strings.ToLower(v.Object))) {
		t.Errorf("message %q does not name the object %q", v.Message, v.Object)
	}
	want := "42501"
	if v.Reason == ReasonParseError {
		want = "42601"
	}
	if v.SQLState != want {
		t.Errorf("SQLState %s, want %s", v.SQLState, want)
	}
	if v.Stmt < 0 || v.Stmt >= len(d.Stmts) {
		t.Errorf("Stmt %d out of range [0,%d)", v.Stmt, len(d.Stmts))
	}
	if v.Pos < -1 || v.Pos > len(sql) {
		t.Errorf("Pos %d out of range for %d bytes", v.Pos, len(sql))
	}
	if v.Pos >= 0 && v.Stmt >= 0 && v.Stmt < len(d.Stmts) {
		if s := d.Stmts[v.Stmt]; v.Pos < s.Start || v.Pos > s.End {
			t.Errorf("Pos %d outside statement %d [%d,%d)", v.Pos, v.Stmt, s.Start, s.End)
		}
	}
}
