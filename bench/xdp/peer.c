// SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only
//
// The far side of bench/relay-xdp.sh, in the kernel so that it costs every relay the same and almost nothing: one
// XDP program on the interface of the namespace holding the load generator's client address and the peer address.
//
// - UDP to the echo peer (PEER_IP:PEER_PORT): swap MACs, addresses and ports and send it back (XDP_TX) — what
//   turnutils_peer does, without a socket. Swapping leaves the IP checksum valid; the UDP checksum is set to none
//   (RFC 768 allows it in IPv4), because a socket relay's datagram arrives here with the partial sum of a veth's
//   checksum offload, which the server's stack would reject on the way back.
// - ChannelData from the relay's listener (port 3478) to the client address: count it (per-CPU packets and bytes,
//   read by the script with bpftool) and drop it — the load generator's receive path, without a socket.
// - Everything else (STUN answers during set-up, ARP) passes to the stack.
//
// bench_loop (bench/relay-cores.sh) echoes the peer's packets the same way, but sends the client's ChannelData back
// to the relay's listener as the client's next packet instead of dropping it: the packets a load generator put in
// once then circle through the relay for as long as it runs, at whatever rate the relay's cores carry, with no
// process outside the relay doing any work. A ChannelData message's channel number is the same in both directions,
// so the swap alone makes the next request. Counted as bench_peer counts.
//
// The addresses are the script's; change both together.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define PEER_IP 0xc6336401   /* 198.51.100.1 */
#define PEER_PORT 3480
#define CLIENT_IP 0xc0000201 /* 192.0.2.1 */
#define LISTENER_PORT 3478

struct counts {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct counts);
} bench_sink SEC(".maps");

/* Sends the frame back where it came from: MACs, addresses and ports swapped, no UDP checksum (see above). */
static __always_inline int reflect(struct ethhdr *eth, struct iphdr *ip, struct udphdr *udp)
{
	unsigned char mac[ETH_ALEN];
	__builtin_memcpy(mac, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, mac, ETH_ALEN);
	__u32 addr = ip->saddr;
	ip->saddr = ip->daddr;
	ip->daddr = addr;
	__u16 port = udp->source;
	udp->source = udp->dest;
	udp->dest = port;
	udp->check = 0;
	return XDP_TX;
}

static __always_inline void count(void *data, void *end)
{
	__u32 key = 0;
	struct counts *c = bpf_map_lookup_elem(&bench_sink, &key);
	if (c) {
		c->packets += 1;
		c->bytes += (__u64)(end - data);
	}
}

/* loop: 0 drops the client's echoes (bench_peer), 1 sends them back to the relay (bench_loop). */
static __always_inline int far_side(struct xdp_md *ctx, int loop)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *udp = (void *)(ip + 1);
	unsigned char *payload = (void *)(udp + 1);

	if ((void *)(payload + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5 ||
	    ip->protocol != IPPROTO_UDP)
		return XDP_PASS;
	if (ip->daddr == bpf_htonl(PEER_IP) && udp->dest == bpf_htons(PEER_PORT))
		return reflect(eth, ip, udp);
	if (ip->daddr == bpf_htonl(CLIENT_IP) && udp->source == bpf_htons(LISTENER_PORT) &&
	    (*payload & 0xc0) == 0x40) {
		count(data, end);
		return loop ? reflect(eth, ip, udp) : XDP_DROP;
	}
	return XDP_PASS;
}

SEC("xdp")
int bench_peer(struct xdp_md *ctx)
{
	return far_side(ctx, 0);
}

SEC("xdp")
int bench_loop(struct xdp_md *ctx)
{
	return far_side(ctx, 1);
}

char LICENSE[] SEC("license") = "GPL";

// On the server's end of the veth while a socket relay is measured: a veth accepts the echo's XDP_TX frames only in
// NAPI mode, which GRO alone gives too, but this kernel's veth then stalls under load (its ring fills and is never
// drained again). Every socket relay gets this program; Traverse with --xdp replaces it with its own.
SEC("xdp")
int bench_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}
