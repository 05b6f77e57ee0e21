package keys

import (
	"regexp"
	"strings"
)

// secretAttr matches the value of a PIN or token attribute wherever it
// appears in text: a pkcs11: URI's pin-value= (in its query or, as some
// tools write it, its path), and a signet token given as token-value=.
// The value runs to the next '&', double quote or white space: RFC 7512
// allows '?', ';' (unescaped, by lenient parsers) and "'" inside a query
// value, so redaction may take more than the PIN, never less.
var secretAttr = regexp.MustCompile(`(?i)((?:pin-value|token-value)=)[^&"\s]*`)

// Redacted replaces a secret in text.
const Redacted = "***"

// punct may follow a redacted value in a message.
const punct = ":,;.)'"

// Redact returns a key reference fit to print: a pkcs11: URI with its PIN
// (pin-value=) replaced by ***. pin-source= names a file and is kept; its
// contents are never part of a reference. Other references are returned
// unchanged.
func Redact(ref string) string {
	if !strings.Contains(strings.ToLower(ref), "-value=") {
		return ref
	}
	return secretAttr.ReplaceAllStringFunc(ref, func(m string) string {
		name, val, _ := strings.Cut(m, "=")
		// Already redacted: keep the punctuation of the message after it.
		if rest, ok := strings.CutPrefix(val, Redacted); ok && strings.Trim(rest, punct) == "" {
			return m
		}
		return name + "=" + Redacted
	})
}

// RedactText redacts every key reference in a message (an error, a log
// line) and every known secret: each of secrets that is not empty is
// replaced by *** wherever it occurs.
func RedactText(text string, secrets ...string) string {
	text = Redact(text)
	for _, s := range secrets {
		if s != "" {
			text = strings.ReplaceAll(text, s, Redacted)
		}
	}
	return text
}
