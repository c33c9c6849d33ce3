// SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only
//
// Loads bench/xdp/gen.c for bench/relay-xdp.sh: `gen-load OBJECT GEN_IFACE OUT_IFACE CPU QSIZE`, run inside the
// outside namespace. Attaches bench_gen to GEN_IFACE (native XDP), points the CPU map's entry for CPU at
// bench_forward with a queue of QSIZE frames, and the device map at OUT_IFACE. Everything stays in place after it
// exits (the attachment holds the program, the program its maps); the script detaches it and deletes the namespace.
// bpftool cannot put a program into a CPU map entry, hence this loader.

#include <stdio.h>
#include <stdlib.h>
#include <net/if.h>
#include <linux/if_link.h>
#include <bpf/libbpf.h>
#include <bpf/bpf.h>

static int fail(const char *what)
{
	fprintf(stderr, "gen-load: %s failed\n", what);
	return 1;
}

int main(int argc, char **argv)
{
	if (argc != 6) {
		fprintf(stderr, "usage: gen-load OBJECT GEN_IFACE OUT_IFACE CPU QSIZE\n");
		return 2;
	}
	unsigned gen = if_nametoindex(argv[2]), out = if_nametoindex(argv[3]);
	__u32 cpu = (__u32)atoi(argv[4]), zero = 0;
	if (!gen || !out)
		return fail("interface look-up");
	struct bpf_object *obj = bpf_object__open_file(argv[1], NULL);
	if (!obj || bpf_object__load(obj))
		return fail("loading the object");
	struct bpf_program *gen_prog = bpf_object__find_program_by_name(obj, "bench_gen");
	struct bpf_program *fwd_prog = bpf_object__find_program_by_name(obj, "bench_forward");
	int cpus = bpf_object__find_map_fd_by_name(obj, "bench_cpus");
	int outs = bpf_object__find_map_fd_by_name(obj, "bench_out");
	if (!gen_prog || !fwd_prog || cpus < 0 || outs < 0)
		return fail("finding the programs and maps");
	struct bpf_cpumap_val cv = {.qsize = (__u32)atoi(argv[5]), .bpf_prog.fd = bpf_program__fd(fwd_prog)};
	if (bpf_map_update_elem(cpus, &cpu, &cv, 0))
		return fail("the CPU map entry");
	struct bpf_devmap_val dv = {.ifindex = out};
	if (bpf_map_update_elem(outs, &zero, &dv, 0))
		return fail("the device map entry");
	if (bpf_xdp_attach((int)gen, bpf_program__fd(gen_prog), XDP_FLAGS_DRV_MODE, NULL))
		return fail("attaching to the interface");
	return 0;
}
