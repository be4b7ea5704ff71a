package proxy

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgmoat/pgmoat/policy"
)

// The catalog queries run as pgmoat's upstream role, so that "applies to
// pgmoat's role" and the search path are what tenant sessions will see.
const (
	searchPathQuery = `SELECT s FROM pg_catalog.unnest(pg_catalog.current_schemas(true)) AS s`

	// roleQuery: RLS does not apply to a superuser or a BYPASSRLS role.
	roleQuery = `SELECT rolname, rolsuper OR rolbypassrls FROM pg_catalog.pg_roles WHERE rolname = current_user`

	relationsQuery = `
SELECT n.nspname, c.relname, c.relkind::text, c.relrowsecurity, c.relforcerowsecurity,
       EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
               WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped),
       coalesce(pg_catalog.lower((SELECT o.option_value FROM pg_catalog.pg_options_to_table(c.reloptions) o
               WHERE o.option_name = 'security_invoker')) IN ('true', 'on', 'yes', '1'), false),
       c.relispartition
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
  AND n.nspname !~ '^pg_(toast|temp_|toast_temp_)'`

	// The expressions of the permissive policies that apply to the current
	// role, each that PostgreSQL applies for the policy's commands: USING
	// for reads, updates and deletes; WITH CHECK (USING when absent) for
	// inserts and updates; '' when there is none. A policy with USING (true)
	// and a tenant WITH CHECK lets every tenant read every row. With each,
	// whether the policy uses user-defined objects: its text could then say
	// "=" or current_setting and mean something else.
	policyExprsQuery = `
SELECT n.nspname || '.' || c.relname,
       coalesce(pg_catalog.pg_get_expr(CASE WHEN e.reads THEN p.polqual ELSE coalesce(p.polwithcheck, p.polqual) END, p.polrelid), ''),
       ` + policyUsesUserObjects + `
FROM pg_catalog.pg_policy p
JOIN pg_catalog.pg_class c ON c.oid = p.polrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN (VALUES (true), (false)) AS e(reads)
WHERE p.polpermissive
  AND (0 = ANY (p.polroles) OR EXISTS (
    SELECT 1 FROM pg_catalog.unnest(p.polroles) AS r(oid)
    WHERE pg_catalog.pg_has_role(current_user, r.oid, 'MEMBER')))
  AND CASE WHEN e.reads THEN p.polcmd IN ('*', 'r', 'w', 'd') ELSE p.polcmd IN ('*', 'a', 'w') END`

	// policyUsesUserObjects: policy p uses an operator, function, type or
	// collation that is not built in (PostgreSQL records no dependency on
	// those), or a column whose collation is nondeterministic (its "=" may
	// ignore case or accents: tenant acme would match ACME's rows).
	policyUsesUserObjects = `EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
         WHERE d.classid = 'pg_catalog.pg_policy'::pg_catalog.regclass AND d.objid = p.oid
           AND (d.refclassid IN ('pg_catalog.pg_operator'::pg_catalog.regclass, 'pg_catalog.pg_proc'::pg_catalog.regclass,
                  'pg_catalog.pg_type'::pg_catalog.regclass, 'pg_catalog.pg_collation'::pg_catalog.regclass)
             OR d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND d.refobjsubid > 0 AND EXISTS (
                  SELECT 1 FROM pg_catalog.pg_attribute a
                  JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation
                  WHERE a.attrelid = d.refobjid AND a.attnum = d.refobjsubid AND NOT co.collisdeterministic)))`

	// What views and materialized views read and call, from their rewrite
	// rules' dependencies.
	viewDepsQuery = `
SELECT DISTINCT vn.nspname || '.' || v.relname, dn.nspname || '.' || d.relname, 'r'
FROM pg_catalog.pg_rewrite rw
JOIN pg_catalog.pg_class v ON v.oid = rw.ev_class
JOIN pg_catalog.pg_namespace vn ON vn.oid = v.relnamespace
JOIN pg_catalog.pg_depend dep ON dep.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass
  AND dep.objid = rw.oid AND dep.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass AND dep.refobjid <> v.oid
JOIN pg_catalog.pg_class d ON d.oid = dep.refobjid
JOIN pg_catalog.pg_namespace dn ON dn.oid = d.relnamespace
WHERE v.relkind IN ('v', 'm') AND vn.nspname NOT IN ('pg_catalog', 'information_schema')
UNION
SELECT DISTINCT vn.nspname || '.' || v.relname, pn.nspname || '.' || p.proname, 'f'
FROM pg_catalog.pg_rewrite rw
JOIN pg_catalog.pg_class v ON v.oid = rw.ev_class
JOIN pg_catalog.pg_namespace vn ON vn.oid = v.relnamespace
JOIN pg_catalog.pg_depend dep ON dep.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass
  AND dep.objid = rw.oid AND dep.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass
JOIN pg_catalog.pg_proc p ON p.oid = dep.refobjid
JOIN pg_catalog.pg_namespace pn ON pn.oid = p.pronamespace
WHERE v.relkind IN ('v', 'm') AND vn.nspname NOT IN ('pg_catalog', 'information_schema')
ORDER BY 1, 3, 2`

	// Sequences owned by a table column (serial, identity).
	sequenceOwnersQuery = `
SELECT sn.nspname || '.' || s.relname, tn.nspname || '.' || t.relname
FROM pg_catalog.pg_depend d
JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S'
JOIN pg_catalog.pg_namespace sn ON sn.oid = s.relnamespace
JOIN pg_catalog.pg_class t ON t.oid = d.refobjid
JOIN pg_catalog.pg_namespace tn ON tn.oid = t.relnamespace
WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass
  AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
  AND d.deptype IN ('a', 'i')`

	// Inheritance parents and partitioned parents, in declaration order.
	// Partitioned indexes are listed too; they are not relations the
	// snapshot keeps, so they are dropped.
	parentsQuery = `
SELECT cn.nspname || '.' || c.relname, pn.nspname || '.' || p.relname
FROM pg_catalog.pg_inherits i
JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
JOIN pg_catalog.pg_namespace cn ON cn.oid = c.relnamespace
JOIN pg_catalog.pg_class p ON p.oid = i.inhparent
JOIN pg_catalog.pg_namespace pn ON pn.oid = p.relnamespace
ORDER BY i.inhrelid, i.inhseqno`

	// Settings other than the tenant setting ($1) that row-level security
	// policies read with a constant current_setting('name'), as
	// pg_get_expr prints it.
	policySettingsQuery = `
SELECT DISTINCT pg_catalog.lower(m[1])
FROM pg_catalog.pg_policy p,
     pg_catalog.regexp_matches(
       coalesce(pg_catalog.pg_get_expr(p.polqual, p.polrelid), '') || ' ' ||
       coalesce(pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid), ''),
       'current_setting\(''([^'']+)''', 'g') AS m
WHERE pg_catalog.lower(m[1]) <> $1
ORDER BY 1`

	// Operators and the functions they call: those outside the system
	// schemas, except an extension's (unless SECURITY DEFINER), and any
	// whose function is SECURITY DEFINER (no built-in's is).
	operatorsQuery = `
SELECT n.nspname || '.' || o.oprname, fn.nspname || '.' || p.proname
FROM pg_catalog.pg_operator o
JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace
JOIN pg_catalog.pg_proc p ON p.oid = o.oprcode
JOIN pg_catalog.pg_namespace fn ON fn.oid = p.pronamespace
WHERE p.prosecdef
   OR n.nspname NOT IN ('pg_catalog', 'information_schema') AND NOT EXISTS (
    SELECT 1 FROM pg_catalog.pg_depend d
    WHERE d.classid = 'pg_catalog.pg_operator'::pg_catalog.regclass AND d.objid = o.oid AND d.deptype = 'e')
ORDER BY 1, 2`

	functionsQuery = `
SELECT n.nspname, p.proname, pg_catalog.bool_or(p.prosecdef), pg_catalog.min(p.prokind::text),
       pg_catalog.bool_or(p.provolatile = 'v'), pg_catalog.bool_and(d.objid IS NOT NULL)
FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
LEFT JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass
  AND d.objid = p.oid AND d.deptype = 'e'
GROUP BY n.nspname, p.proname`
)

// LoadCatalog reads the snapshot of the database the policy decides
// against. conn must be authenticated as pgmoat's upstream role.
func LoadCatalog(ctx context.Context, conn *pgconn.PgConn, tenantSetting string) (*policy.Catalog, error) {
	cat := &policy.Catalog{
		Relations: map[string]*policy.Relation{},
		Functions: map[string]*policy.Function{},
	}
	var role string
	var bypass bool
	err := query(ctx, conn, roleQuery, nil, func(row [][]byte) {
		role, bypass = string(row[0]), isTrue(row[1])
	})
	if err != nil {
		return nil, fmt.Errorf("load role: %w", err)
	}
	if bypass {
		return nil, fmt.Errorf("upstream role %q is a superuser or has BYPASSRLS: row-level security does not apply to it, so pgmoat cannot isolate tenants; connect as a role without them", role)
	}
	err = query(ctx, conn, searchPathQuery, nil, func(row [][]byte) {
		cat.SearchPath = append(cat.SearchPath, string(row[0]))
	})
	if err != nil {
		return nil, fmt.Errorf("load search path: %w", err)
	}
	// Keys are "schema.name", so a."b.c" and "a.b".c share one. Such a key
	// is ambiguous: the policy cannot tell which relation a text names, so
	// it stands for an unprotected table, which tenants are refused.
	ambiguous := map[string]bool{}
	err = query(ctx, conn, relationsQuery, nil, func(row [][]byte) {
		r := &policy.Relation{
			Schema:           string(row[0]),
			Name:             string(row[1]),
			Kind:             row[2][0],
			RowSecurity:      isTrue(row[3]),
			ForceRowSecurity: isTrue(row[4]),
			TenantColumn:     isTrue(row[5]),
			SecurityInvoker:  isTrue(row[6]),
			IsPartition:      isTrue(row[7]),
		}
		if cat.Relations[r.Key()] != nil {
			ambiguous[r.Key()] = true
		}
		cat.Relations[r.Key()] = r
	})
	if err != nil {
		return nil, fmt.Errorf("load relations: %w", err)
	}
	// A relation's TenantPolicy: it has policy expressions, and each is
	// keyed on the tenant (policy.TenantKey), on one column, with built-in
	// objects only.
	type keying struct {
		column string
		ok     bool
	}
	keyed := map[string]*keying{}
	err = query(ctx, conn, policyExprsQuery, nil, func(row [][]byte) {
		k := keyed[string(row[0])]
		if k == nil {
			k = &keying{ok: true}
			keyed[string(row[0])] = k
		}
		col, ok := policy.TenantKey(string(row[1]), tenantSetting)
		k.ok = k.ok && ok && !isTrue(row[2]) && (k.column == "" || col == k.column)
		k.column = col
	})
	if err != nil {
		return nil, fmt.Errorf("load row-level security policies: %w", err)
	}
	for key, k := range keyed {
		if r := cat.Relations[key]; r != nil {
			r.TenantPolicy = k.ok
		}
	}
	for key := range ambiguous {
		r := cat.Relations[key]
		*r = policy.Relation{Schema: r.Schema, Name: r.Name, Kind: 'r'}
	}
	err = query(ctx, conn, viewDepsQuery, nil, func(row [][]byte) {
		v := cat.Relations[string(row[0])]
		if v == nil {
			return
		}
		if row[2][0] == 'f' {
			v.Functions = append(v.Functions, string(row[1]))
		} else {
			v.DependsOn = append(v.DependsOn, string(row[1]))
		}
	})
	if err != nil {
		return nil, fmt.Errorf("load view dependencies: %w", err)
	}
	err = query(ctx, conn, sequenceOwnersQuery, nil, func(row [][]byte) {
		if s := cat.Relations[string(row[0])]; s != nil {
			s.OwnedBy = string(row[1])
		}
	})
	if err != nil {
		return nil, fmt.Errorf("load sequence owners: %w", err)
	}
	err = query(ctx, conn, parentsQuery, nil, func(row [][]byte) {
		if r := cat.Relations[string(row[0])]; r != nil {
			r.Parents = append(r.Parents, string(row[1]))
		}
	})
	if err != nil {
		return nil, fmt.Errorf("load inheritance parents: %w", err)
	}
	err = query(ctx, conn, policySettingsQuery, [][]byte{[]byte(strings.ToLower(tenantSetting))}, func(row [][]byte) {
		cat.PolicySettings = append(cat.PolicySettings, string(row[0]))
	})
	if err != nil {
		return nil, fmt.Errorf("load settings read by policies: %w", err)
	}
	err = query(ctx, conn, operatorsQuery, nil, func(row [][]byte) {
		if cat.Operators == nil {
			cat.Operators = map[string][]string{}
		}
		op, fn := string(row[0]), string(row[1])
		if !slices.Contains(cat.Operators[op], fn) {
			cat.Operators[op] = append(cat.Operators[op], fn)
		}
	})
	if err != nil {
		return nil, fmt.Errorf("load operators: %w", err)
	}
	err = query(ctx, conn, functionsQuery, nil, func(row [][]byte) {
		f := &policy.Function{
			Schema:          string(row[0]),
			Name:            string(row[1]),
			SecurityDefiner: isTrue(row[2]),
			Kind:            row[3][0],
			Volatile:        isTrue(row[4]),
			Extension:       isTrue(row[5]),
		}
		cat.Functions[f.Key()] = f
	})
	if err != nil {
		return nil, fmt.Errorf("load functions: %w", err)
	}
	return cat, nil
}

// query runs sql with text parameters and calls row for each result row.
func query(ctx context.Context, conn *pgconn.PgConn, sql string, args [][]byte, row func([][]byte)) error {
	rr := conn.ExecParams(ctx, sql, args, nil, nil, nil)
	for rr.NextRow() {
		row(rr.Values())
	}
	_, err := rr.Close()
	return err
}

func isTrue(b []byte) bool { return len(b) == 1 && b[0] == 't' }
