package policy

import (
	"fmt"
	"slices"
	"strings"
)

// setKind is what a SET/RESET statement does to a setting.
type setKind uint8

const (
	setValue    setKind = iota // SET x = v (or TO v, FROM CURRENT)
	setDefault                 // SET x TO DEFAULT
	setReset                   // RESET x
	setResetAll                // RESET ALL
)

// refusedSettings weaken row-level security or the parser's view of the
// text, or change the role; tenants may not change them at all.
var refusedSettings = map[string]Reason{
	"role":                     ReasonRole,
	"session_authorization":    ReasonRole,
	"row_security":             ReasonSetting,
	"session_replication_role": ReasonSetting, // disables triggers
	"search_path":              ReasonSetting, // would change what names resolve to
	"backslash_quote":          ReasonSetting,
}

// checkSetting decides a SET/RESET of name (any case) to values (the
// literal arguments as text; nil if not literals). It returns nil if
// allowed.
func (e *Engine) checkSetting(kind setKind, name string, values []string) *Violation {
	if kind == setResetAll {
		return newViolation(ReasonTenantSetting, e.setting,
			fmt.Sprintf("pgmoat: RESET ALL is not allowed: it would reset %s, which pgmoat manages", e.setting),
			"reset settings one by one")
	}
	name = strings.ToLower(name)
	if name == e.setting {
		return newViolation(ReasonTenantSetting, name,
			fmt.Sprintf("pgmoat: setting %q is managed by pgmoat and cannot be changed", name), "")
	}
	if e.policySettings[name] {
		return newViolation(ReasonTenantSetting, name,
			fmt.Sprintf("pgmoat: setting %q is read by a row-level security policy and cannot be changed through pgmoat", name), "")
	}
	if name == "search_path" && kind == setValue && e.isSearchPath(values) {
		return nil // what names resolve to stays as the catalog says
	}
	if reason, ok := refusedSettings[name]; ok {
		if reason == ReasonRole {
			return newViolation(reason, name, fmt.Sprintf("pgmoat: SET/RESET %s is not allowed: every tenant uses pgmoat's role",
				strings.ToUpper(strings.ReplaceAll(name, "_", " "))), "")
		}
		return newViolation(reason, name, fmt.Sprintf("pgmoat: changing setting %q is not allowed through pgmoat", name), "")
	}
	// The parser must read the text the way the server does: strings stay
	// standard-conforming and the encoding stays one in which ASCII bytes
	// are always ASCII characters.
	var ok func(string) bool
	switch name {
	case "standard_conforming_strings":
		ok = func(v string) bool {
			switch strings.ToLower(v) {
			case "on", "true", "1", "yes":
				return true
			}
			return false
		}
	case "client_encoding":
		ok = func(v string) bool { return safeEncodings[cleanEncodingName(v)] }
	default:
		return nil
	}
	if kind != setValue || len(values) != 1 || !ok(values[0]) {
		return newViolation(ReasonSetting, name,
			fmt.Sprintf("pgmoat: setting %q may only be set to its safe value through pgmoat", name), "")
	}
	return nil
}

// isSearchPath reports whether setting search_path to the schemas values
// leaves it as the catalog's: the same schemas in the same order, or, when
// the catalog's path starts with pg_catalog, the same without it (the
// server then puts pg_catalog first on its own).
func (e *Engine) isSearchPath(values []string) bool {
	path := e.cat.SearchPath
	if len(values) == 0 {
		return false
	}
	if slices.Equal(values, path) {
		return true
	}
	return len(path) > 0 && path[0] == pgCatalog && slices.Equal(values, path[1:]) && !slices.Contains(values, pgCatalog)
}

// safeEncodings are the client encodings (as cleanEncodingName spells them)
// in which every byte below 0x80 is the ASCII character it looks like, so
// that pg_query (which reads the text as UTF-8) and the server split quotes,
// semicolons and comments at the same places. SJIS, BIG5, GBK, UHC, GB18030
// and JOHAB are left out: an ASCII byte can be the second byte of one of
// their characters.
var safeEncodings = setOf(
	"utf8", "unicode", "sqlascii",
	"latin1", "latin2", "latin3", "latin4", "latin5", "latin6", "latin7", "latin8", "latin9", "latin10",
	"iso88591", "iso88592", "iso88593", "iso88594", "iso88599", "iso885910",
	"iso885913", "iso885914", "iso885915", "iso885916",
	"win1250", "win1251", "win1252", "win1253", "win1254", "win1255", "win1256", "win1257", "win1258",
	"windows1250", "windows1251", "windows1252", "windows1253", "windows1254", "windows1255",
	"windows1256", "windows1257", "windows1258",
)

// cleanEncodingName normalises an encoding name the way PostgreSQL's
// clean_encoding_name does before looking it up: lower case, only letters
// and digits.
func cleanEncodingName(name string) string {
	var b strings.Builder
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case 'a' <= c && c <= 'z', '0' <= c && c <= '9':
			b.WriteByte(c)
		case 'A' <= c && c <= 'Z':
			b.WriteByte(c + 'a' - 'A')
		}
	}
	return b.String()
}
