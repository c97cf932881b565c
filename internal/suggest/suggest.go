// Package suggest finds the likely intended name behind a typo, for the
// "did you mean" hints of mlskeyd's and mlskeyctl's flag errors.
package suggest

// Nearest returns the one of names closest to name in edit distance, or ""
// when none is close enough to be a likely typo.
func Nearest(name string, names []string) string {
	best, bestD := "", 0
	for _, n := range names {
		if d := editDistance(name, n); best == "" || d < bestD {
			best, bestD = n, d
		}
	}
	if bestD > max(2, len(name)/3) {
		return ""
	}
	return best
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
