package policy

import (
	"fmt"
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
		ok = func(v string) bool {
			switch strings.ToLower(v) {
			case "utf8", "utf-8", "unicode":
				return true
			}
			return false
		}
	default:
		return nil
	}
	if kind != setValue || len(values) != 1 || !ok(values[0]) {
		return newViolation(ReasonSetting, name,
			fmt.Sprintf("pgmoat: setting %q may only be set to its safe value through pgmoat", name), "")
	}
	return nil
}
