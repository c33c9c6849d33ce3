// SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only
//
// The load generator's side of bench/relay-xdp.sh: moves every packet the load generator sends to the server onto
// the server's core before it enters the server's interface, as a NIC's receive queue on that core would.
//
// A veth runs the receiving end's work (XDP programs included) in softirq on the core that sent the packet. Sent
// straight from the load generator's core, the fast path's whole cost — and a socket relay's receive path — would
// run there, beside the load generator, and never on the server's core. Instead the load generator sends on its own
// veth (gen0 → gen1); bench_gen on gen1 rewrites the Ethernet header for the server's link and hands the frame to
// a CPU map entry for the server's core; that core's kernel thread runs bench_forward, which transmits the frame
// on the outside end of the server's veth. From there on, every system's packets are received, relayed, echoed and
// counted on the server's core, and the load generator's core only sends.
//
// The MAC addresses are the script's (it sets them); change both together.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define SERVER_NET 0xcb007100 /* 203.0.113.0/24 */
#define SERVER_CPU 1

static const unsigned char SERVER_MAC[ETH_ALEN] = {0x02, 0x00, 0x00, 0x00, 0x00, 0x01};  /* trvx-s0 */
static const unsigned char OUTSIDE_MAC[ETH_ALEN] = {0x02, 0x00, 0x00, 0x00, 0x00, 0x02}; /* trvx-o0 */

struct {
	__uint(type, BPF_MAP_TYPE_CPUMAP);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct bpf_cpumap_val);
} bench_cpus SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bpf_devmap_val);
} bench_out SEC(".maps");

SEC("xdp")
int bench_gen(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);

	if ((void *)(ip + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP) ||
	    (ip->daddr & bpf_htonl(0xffffff00)) != bpf_htonl(SERVER_NET))
		return XDP_PASS;
	__builtin_memcpy(eth->h_dest, SERVER_MAC, ETH_ALEN);
	__builtin_memcpy(eth->h_source, OUTSIDE_MAC, ETH_ALEN);
	return bpf_redirect_map(&bench_cpus, SERVER_CPU, XDP_PASS);
}

SEC("xdp/cpumap")
int bench_forward(struct xdp_md *ctx)
{
	return bpf_redirect_map(&bench_out, 0, XDP_DROP);
}

char LICENSE[] SEC("license") = "GPL";
