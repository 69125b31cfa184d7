// Package procmem hands pages of this process's executable back to the
// kernel once start-up is over.
//
// A Go binary's code and read-only data are mapped from its file. The
// kernel maps them in large pieces around every page touched (fault-around
// and large page-cache folios), and start-up touches code that never runs
// again (flag and config parsing, enrollment, TLS set-up, package
// initialisers of every linked library). Measured on edge-agent (20.9 MB
// binary, Linux 6.18): 16.8 MB of the executable resident when idle after
// start, 7.6-9.3 MB once paged out and refaulted by 12,000 messages
// ingested and the API used. Release asks the kernel to reclaim those
// pages (madvise MADV_PAGEOUT, Linux 5.4 or later); pages still in use
// fault back in from the page cache or the disk on their next use.
package procmem

// Released reports what one Release did.
type Released struct {
	// Mappings is the number of read-only mappings of the executable
	// advised.
	Mappings int
	// Bytes is their total length (not all of it was resident).
	Bytes uint64
}
