package proxy

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgmoat/pgmoat/config"
)

// tempModes are the protocols a temporary table's name travels in: the
// simple Query, a named prepared statement and the unnamed statement.
var tempModes = []pgx.QueryExecMode{
	pgx.QueryExecModeSimpleProtocol,
	pgx.QueryExecModeCacheStatement,
	pgx.QueryExecModeExec,
}

// TestTempTableGoneNeverResolvesToNewTable closes the window between a
// session's temporary table going away and pgmoat's next catalog refresh:
// meanwhile a real, unprotected table of the same name appears. pgmoat
// still believes the name is the session's temporary table, so it must
// send it qualified (pg_temp.name): the server then answers 42P01 instead
// of reading the new table.
func TestTempTableGoneNeverResolvesToNewTable(t *testing.T) {
	const table = "tt_window"
	p := startProxy(t, nil) // the catalog snapshot is taken now, without the table
	su := superuser(t, p)
	ctx := context.Background()
	if _, err := su.Exec(ctx, "drop table if exists public."+table); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// The cluster is shared: other tests must not see the table.
		if _, err := su.Exec(context.Background(), "drop table if exists public."+table); err != nil {
			t.Errorf("clean up public.%s: %v", table, err)
		}
	})

	// Each session creates the temporary table, uses it, and loses it.
	type gone struct {
		name string
		conn *pgx.Conn
	}
	var sessions []gone
	for _, mode := range tempModes {
		conn := p.connect(t, "acme_app", "acme_secret", mode)
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, sql := range []string{
			"create temp table " + table + " (tenant_id text, secret text) on commit drop",
			"insert into " + table + " values ('acme', 'mine')",
		} {
			if _, err := tx.Exec(ctx, sql); err != nil {
				t.Fatalf("%s: %s: %v", mode, sql, err)
			}
		}
		if err := tx.Commit(ctx); err != nil { // drops the table
			t.Fatal(err)
		}
		sessions = append(sessions, gone{mode.String() + "/on commit drop", conn})

		conn = p.connect(t, "acme_app", "acme_secret", mode)
		for _, sql := range []string{"create temp table " + table + " (tenant_id text, secret text)", "drop table " + table} {
			if _, err := conn.Exec(ctx, sql); err != nil {
				t.Fatalf("%s: %s: %v", mode, sql, err)
			}
		}
		sessions = append(sessions, gone{mode.String() + "/dropped", conn})
	}

	// An unprotected table of the same name, unknown to pgmoat's snapshot,
	// holding another tenant's row and granted to pgmoat's role.
	for _, sql := range []string{
		"create table public." + table + " (tenant_id text, secret text)",
		"insert into public." + table + " values ('globex', 'globex-secret')",
		"grant select, insert, update, delete on public." + table + " to pgmoat",
	} {
		if _, err := su.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}

	for _, s := range sessions {
		t.Run(s.name, func(t *testing.T) {
			for _, sql := range []string{
				"select tenant_id, secret from " + table,
				"select count(*) from orders where tenant_id in (select tenant_id from " + table + ")",
				"insert into " + table + " values ('acme', 'planted')",
				"update " + table + " set secret = 'changed'",
				"delete from " + table,
				"drop table " + table,
			} {
				rows, err := s.conn.Query(ctx, sql)
				if err == nil {
					var seen []string
					for rows.Next() {
						seen = append(seen, fmt.Sprint(rows.RawValues()))
					}
					rows.Close()
					err = rows.Err()
					if len(seen) > 0 {
						t.Errorf("%s returned rows: %v", sql, seen)
					}
				}
				// 42P01 from the server (pg_temp.tt_window does not exist),
				// not pgmoat's 42501: pgmoat allowed the text.
				if code := sqlstate(err); code != "42P01" {
					t.Errorf("%s: %v, want 42P01", sql, err)
				}
			}
			wantOnly(t, tenantsOf(t, s.conn, "select tenant_id from orders"), "acme")
		})
	}

	var rows []string
	r, err := su.Query(ctx, "select tenant_id || ':' || secret from public."+table)
	if err == nil {
		rows, err = pgx.CollectRows(r, pgx.RowTo[string])
	}
	if err != nil || len(rows) != 1 || rows[0] != "globex:globex-secret" {
		t.Fatalf("public.%s now holds %v (%v), want only the globex row", table, rows, err)
	}
}

// TestTempTableBulkLoad: qualifying the names keeps the temporary-table
// workflow working: COPY into it (pgx quotes the name), read it, INSERT ...
// SELECT from it into a protected table, drop it.
func TestTempTableBulkLoad(t *testing.T) {
	p := startProxy(t, nil)
	ctx := context.Background()
	for _, mode := range tempModes {
		t.Run(mode.String(), func(t *testing.T) {
			conn := p.connect(t, "acme_app", "acme_secret", mode)
			tx, err := conn.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback(ctx) // leave the shared orders table as it was
			if _, err := tx.Exec(ctx, "create temp table tt_load (amount numeric, status text) on commit drop"); err != nil {
				t.Fatal(err)
			}
			const n = 100
			src := pgx.CopyFromSlice(n, func(i int) ([]any, error) { return []any{fmt.Sprint(i), "tt_load"}, nil })
			if copied, err := tx.CopyFrom(ctx, pgx.Identifier{"tt_load"}, []string{"amount", "status"}, src); err != nil || copied != n {
				t.Fatalf("CopyFrom: %d rows, %v", copied, err)
			}
			var count int
			if err := tx.QueryRow(ctx, "select count(*) from tt_load t where t.status = $1", "tt_load").Scan(&count); err != nil || count != n {
				t.Fatalf("count: %d, %v", count, err)
			}
			tag, err := tx.Exec(ctx, "insert into orders (tenant_id, amount, status) select 'acme', amount, status from tt_load")
			if err != nil || tag.RowsAffected() != n {
				t.Fatalf("insert ... select: %v %v", tag, err)
			}
			wantOnly(t, tenantsOf(t, conn, "select tenant_id from orders where status = 'tt_load'"), "acme")
			if _, err := tx.Exec(ctx, "drop table tt_load"); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestTempTableErrorPosition: the server reports positions in the text it
// received, which has pg_temp. inserted; the client gets them in its own
// text.
func TestTempTableErrorPosition(t *testing.T) {
	p := startProxy(t, nil)
	ctx := context.Background()
	for _, mode := range tempModes {
		t.Run(mode.String(), func(t *testing.T) {
			conn := p.connect(t, "acme_app", "acme_secret", mode)
			if _, err := conn.Exec(ctx, "create temp table tt_pos (id int)"); err != nil {
				t.Fatal(err)
			}
			for _, c := range []struct{ sql, at string }{ // at: where the error points
				{"select nocolumn from tt_pos", "nocolumn"},
				{"select t2.id from tt_pos, tt_pos t2 where t2.nocolumn = 1", "t2.nocolumn"},
				{"select 'é', id from tt_pos where nocolumn = 1", "nocolumn"},
				{`select * from"tt_pos"where nocolumn = 1`, "nocolumn"}, // sent as from pg_temp."tt_pos"
			} {
				_, err := conn.Exec(ctx, c.sql)
				var pe *pgconn.PgError
				if !errors.As(err, &pe) || pe.Code != "42703" {
					t.Fatalf("%s: %v, want 42703", c.sql, err)
				}
				// A 1-based character position in the client's text.
				want := int32(utf8.RuneCountInString(c.sql[:strings.Index(c.sql, c.at)])) + 1
				if pe.Position != want {
					t.Errorf("%s: position %d, want %d", c.sql, pe.Position, want)
				}
			}
		})
	}
}

// TestTempQualifyNotInAuditMode: audit mode lets a name that is not a
// temporary table of the session run (logged) as the client wrote it, so it
// must not be sent as pg_temp.name: the application being rolled out would
// fail where it works without pgmoat.
func TestTempQualifyNotInAuditMode(t *testing.T) {
	const table = "tt_audit"
	p := startProxy(t, func(c *config.Config) { c.Policy.Mode = config.ModeAudit })
	su := superuser(t, p)
	ctx := context.Background()
	t.Cleanup(func() {
		if _, err := su.Exec(context.Background(), "drop table if exists public."+table); err != nil {
			t.Errorf("clean up public.%s: %v", table, err)
		}
	})
	for _, sql := range []string{
		"drop table if exists public." + table,
		"create table public." + table + " (secret text)", // after pgmoat's snapshot
		"insert into public." + table + " values ('visible')",
		"grant select on public." + table + " to pgmoat",
	} {
		if _, err := su.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	for _, mode := range tempModes {
		conn := p.connect(t, "acme_app", "acme_secret", mode)
		var got string
		if err := conn.QueryRow(ctx, "select secret from "+table).Scan(&got); err != nil || got != "visible" {
			t.Fatalf("%s: audit mode read %q, %v; want the row", mode, got, err)
		}
	}
}

// TestAuditModeRefusesLaterEscapes: audit mode lets a statement reaching an
// unprotected relation run, but a tenant escape later in the same text is
// refused all the same (and nothing after it runs).
func TestAuditModeRefusesLaterEscapes(t *testing.T) {
	p := startProxy(t, func(c *config.Config) { c.Policy.Mode = config.ModeAudit })
	ctx := context.Background()
	conn := p.connect(t, "acme_app", "acme_secret", pgx.QueryExecModeSimpleProtocol)
	pc := conn.PgConn()
	escape := "select set_config('app.current_tenant_id', 'globex', true)"

	results, err := pc.Exec(ctx, "select count(*) from audit_raw; "+escape+"; select distinct tenant_id from orders").ReadAll()
	if sqlstate(err) != "42501" {
		t.Fatalf("audited statement then an escape: %v, want 42501", err)
	}
	if len(results) != 1 || len(results[0].Rows) != 1 {
		t.Errorf("results %d, want only the audited statement's", len(results))
	}
	if _, err := pc.Exec(ctx, "select * from audit_raw, "+escape[len("select "):]).ReadAll(); sqlstate(err) != "42501" {
		t.Errorf("escape in the audited statement: %v, want 42501", err)
	}
	// Alone, the audited statement runs.
	if _, err := pc.Exec(ctx, "select count(*) from audit_raw").ReadAll(); err != nil {
		t.Errorf("audited statement alone: %v", err)
	}
	wantOnly(t, tenantsOf(t, conn, "select tenant_id from orders"), "acme")
}
