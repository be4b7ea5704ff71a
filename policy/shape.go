package policy

import "strings"

// scanShape is the shape cache's key for the common case, computed without
// the parser: clients that inline their parameters (psycopg2, pgbench -M
// simple) send a new SELECT, INSERT, UPDATE or DELETE text every time, and
// pg_query.Normalize's round trip through C costs more than the rest of a
// shape-cache hit.
//
// Its contract is pg_query.Normalize's: two texts with the same key differ
// only in the values of their literal constants. It copies every byte
// verbatim except string and number literals, each replaced by a byte that
// no copied byte can be, so the rest of the text, and where each literal
// begins and ends, must be as PostgreSQL's lexer sees them. It therefore
// gives up (ok false, and the caller falls back to pg_query.Normalize) on
// anything whose lexing is subtle: comments, dollar quotes and parameters
// ($), "..", prefixed strings (E'x', B'1', X'f', N'x', U&'x'), string
// literals continued on another line, numbers with a suffix (0x1F, 1_000,
// 1e), backslashes and bytes outside printable ASCII outside a string, and
// statements other than plain DML. In DML every literal is an A_Const
// except type modifiers and array bounds (varchar(10), int[3]), which no
// rule looks at. So texts that differ only there share a key: one that the
// parser refuses (float(54), int[3.5]) can be allowed from the cache, and
// the server, which parses the same text, refuses it.
//
// Keys begin with a NUL byte, which no text pg_query.Normalize accepts
// holds, so the two kinds of key never meet in the cache.
func scanShape(sql string) (key string, ok bool) {
	if !startsWithDML(sql) {
		return "", false
	}
	buf := make([]byte, 1, len(sql)+1) // buf[0] is the NUL prefix
	for i := 0; i < len(sql); {
		c := sql[i]
		switch {
		case c == '\'':
			end, ok := stringEnd(sql, i)
			if !ok || continued(sql, end) {
				return "", false
			}
			buf = append(buf, shapeString)
			i = end
		case isDigit(c) || c == '.' && i+1 < len(sql) && isDigit(sql[i+1]):
			end, ok := numberEnd(sql, i)
			if !ok {
				return "", false
			}
			buf = append(buf, shapeNumber)
			i = end
		case isIdentStart(c):
			j := i + 1
			for j < len(sql) && isIdentCont(sql[j]) {
				j++
			}
			// A quote right after a word is a prefixed string (E'x',
			// B'1', X'f', N'x'); U&'x' and U&"x" begin with a word and '&'.
			if j < len(sql) && (sql[j] == '\'' || sql[j] == '&' && j == i+1 && (c == 'u' || c == 'U')) {
				return "", false
			}
			buf = append(buf, sql[i:j]...)
			i = j
		case c == '"':
			end, ok := quotedIdentEnd(sql, i)
			if !ok {
				return "", false
			}
			buf = append(buf, sql[i:end]...)
			i = end
		case c == '$' || c == '\\' || c >= 0x7f || c < ' ' && !isSpace(c):
			return "", false
		case c == '-' && i+1 < len(sql) && sql[i+1] == '-',
			c == '/' && i+1 < len(sql) && sql[i+1] == '*':
			return "", false // a comment
		case c == '.' && i+1 < len(sql) && sql[i+1] == '.':
			return "", false // "..", which the lexer reads before ".5"
		default: // whitespace, punctuation, operator characters
			buf = append(buf, c)
			i++
		}
	}
	return string(buf), true
}

// The bytes that stand for a literal in a scanShape key: control bytes,
// which scanShape never copies.
const (
	shapeString = 0x01
	shapeNumber = 0x02
)

// startsWithDML reports whether sql's first word is one that begins a
// plain DML statement.
func startsWithDML(sql string) bool {
	i := 0
	for i < len(sql) && isSpace(sql[i]) {
		i++
	}
	j := i
	for j < len(sql) && isIdentCont(sql[j]) {
		j++
	}
	for _, w := range [...]string{"select", "insert", "update", "delete", "with", "values"} {
		if strings.EqualFold(sql[i:j], w) {
			return true
		}
	}
	return false
}

// stringEnd returns the end of the standard string literal starting at
// sql[i], a single quote; a doubled quote stands for a quote. (Backslashes are
// plain characters: pgmoat keeps standard_conforming_strings on, as the
// parser assumes.)
func stringEnd(sql string, i int) (int, bool) {
	for j := i + 1; j < len(sql); j++ {
		if sql[j] == '\'' {
			if j+1 < len(sql) && sql[j+1] == '\'' {
				j++
				continue
			}
			return j + 1, true
		}
	}
	return 0, false // unterminated
}

// continued reports whether the string literal ending at sql[i] goes on:
// PostgreSQL joins two string literals separated by whitespace that holds
// a line break into one.
func continued(sql string, i int) bool {
	newline := false
	for ; i < len(sql) && isSpace(sql[i]); i++ {
		newline = newline || sql[i] == '\n' || sql[i] == '\r'
	}
	return newline && i < len(sql) && sql[i] == '\''
}

// quotedIdentEnd returns the end of the quoted identifier starting at
// sql[i], a double quote; a doubled quote stands for a quote.
func quotedIdentEnd(sql string, i int) (int, bool) {
	for j := i + 1; j < len(sql); j++ {
		c := sql[j]
		if c == '"' {
			if j+1 < len(sql) && sql[j+1] == '"' {
				j++
				continue
			}
			return j + 1, true
		}
		if c < ' ' && !isSpace(c) || c >= 0x7f {
			return 0, false
		}
	}
	return 0, false
}

// numberEnd returns the end of the decimal number starting at sql[i]:
// digits, an optional fraction, an optional exponent (PostgreSQL's
// integer, numeric and real). It refuses a number followed by anything the
// lexer could join to it or complain about: a letter or digit (0x1F, 1e,
// 12abc), '_' (1_000), '$', '.' (1..2), a quote.
func numberEnd(sql string, i int) (int, bool) {
	j := i
	digits := func() {
		for j < len(sql) && isDigit(sql[j]) {
			j++
		}
	}
	digits()
	if j < len(sql) && sql[j] == '.' {
		j++
		digits()
	}
	if j < len(sql) && (sql[j] == 'e' || sql[j] == 'E') {
		k := j + 1
		if k < len(sql) && (sql[k] == '+' || sql[k] == '-') {
			k++
		}
		if k < len(sql) && isDigit(sql[k]) {
			j = k
			digits()
		}
	}
	if j < len(sql) {
		if c := sql[j]; isIdentCont(c) || c == '.' || c == '\'' || c == '"' {
			return 0, false
		}
	}
	return j, true
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

func isIdentStart(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || c == '_'
}

// isIdentCont reports whether c may continue an identifier. (Inside an
// identifier '$' is a plain character; only outside one does it begin a
// parameter or a dollar quote.)
func isIdentCont(c byte) bool { return isIdentStart(c) || isDigit(c) || c == '$' }

// isSpace is PostgreSQL's lexer's whitespace.
func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'
}
