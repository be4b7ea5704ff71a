package policy

import "testing"

func TestFingerprint(t *testing.T) {
	base := Fingerprint("select * from orders where id = 1")
	if len(base) != 16 {
		t.Fatalf("fingerprint %q, want 16 hex digits", base)
	}
	tests := []struct {
		name, sql string
		same      bool // same fingerprint as base
	}{
		{"other literal", "SELECT * FROM orders WHERE id = 42", true},
		{"whitespace and comment", "select *\n  from orders -- c\n where id = $1", true},
		{"other table", "select * from customers where id = 1", false},
		{"other column", "select * from orders where amount = 1", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fp := Fingerprint(tt.sql)
			if fp == "" {
				t.Fatalf("no fingerprint for %q", tt.sql)
			}
			if (fp == base) != tt.same {
				t.Errorf("Fingerprint(%q) = %s, base %s, want same=%v", tt.sql, fp, base, tt.same)
			}
		})
	}
	for _, sql := range []string{"selec 1", "select 1\x00; drop table t"} {
		if fp := Fingerprint(sql); fp != "" {
			t.Errorf("Fingerprint(%q) = %q, want \"\"", sql, fp)
		}
	}
}

func TestNormalize(t *testing.T) {
	tests := []struct {
		sql, want string
	}{
		{"select * from t where a = 'secret' and b = 42", "select * from t where a = $1 and b = $2"},
		{"SET app.current_tenant_id = 'globex'", "SET app.current_tenant_id = $1"},
		{"ALTER ROLE x PASSWORD 'hunter2'", "ALTER ROLE x PASSWORD $1"},
		{"insert into t values ('a', 1); select 'x'", "insert into t values ($1, $2); select $3"},
		{"select a from t", "select a from t"},
	}
	for _, tt := range tests {
		t.Run(tt.sql, func(t *testing.T) {
			got, err := Normalize(tt.sql)
			if err != nil || got != tt.want {
				t.Errorf("Normalize = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
	for _, sql := range []string{"selec 'secret'", "select 1\x00'secret'"} {
		if got, err := Normalize(sql); err == nil {
			t.Errorf("Normalize(%q) = %q, want an error", sql, got)
		}
	}
}
