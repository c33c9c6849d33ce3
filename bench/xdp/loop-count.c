// SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only
//
// Reads bench/xdp/peer.c's count for bench/relay-cores.sh: `loop-count MAP_ID SECONDS` prints, at the start and then
// once a second for SECONDS seconds, the time (ns, monotonic) and the packets counted so far (the per-CPU values
// summed). One process that sleeps between reads, because the relay being measured has every core: a bpftool and a
// python per read took a few per cent of them.

#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

struct counts {
	__u64 packets;
	__u64 bytes;
};

static int fail(const char *what)
{
	fprintf(stderr, "loop-count: %s failed\n", what);
	return 1;
}

static long long now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: loop-count MAP_ID SECONDS\n");
		return 2;
	}
	int seconds = atoi(argv[2]);
	if (seconds < 1 || seconds > 600)
		return fail("SECONDS (1..600)");
	int map = bpf_map_get_fd_by_id((__u32)atoi(argv[1]));
	int cpus = libbpf_num_possible_cpus();
	if (map < 0 || cpus <= 0)
		return fail("opening the map");
	struct counts *values = calloc((size_t)cpus, sizeof(*values));
	if (!values)
		return fail("allocating");
	__u32 key = 0;
	long long start = now_ns();
	for (int i = 0; i <= seconds; i++) {
		if (i > 0) {
			long long next = start + (long long)i * 1000000000LL, left = next - now_ns();
			if (left > 0) {
				struct timespec t = {.tv_sec = left / 1000000000LL, .tv_nsec = left % 1000000000LL};
				nanosleep(&t, NULL);
			}
		}
		if (bpf_map_lookup_elem(map, &key, values))
			return fail("reading the map");
		unsigned long long total = 0;
		for (int c = 0; c < cpus; c++)
			total += values[c].packets;
		printf("%lld %llu\n", now_ns(), total);
		fflush(stdout);
	}
	return 0;
}
