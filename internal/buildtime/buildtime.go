// Package buildtime gives the time that goes into signatures: the
// SOURCE_DATE_EPOCH of the reproducible-builds specification when it is set
// (seconds since the Unix epoch), the current time otherwise.
package buildtime

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// Now returns SOURCE_DATE_EPOCH as a UTC time if set, else the current time
// truncated to whole seconds. A malformed variable is an error, not a silent
// fallback to the clock: a reproducible build must not quietly stop being one.
func Now() (time.Time, error) {
	v, ok := os.LookupEnv("SOURCE_DATE_EPOCH")
	if !ok || strings.TrimSpace(v) == "" {
		return time.Now().UTC().Truncate(time.Second), nil
	}
	secs, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
	if err != nil || secs < 0 || secs > 253402300799 {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH=%q: not a number of seconds since 1970-01-01", v)
	}
	return time.Unix(secs, 0).UTC(), nil
}
