// SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only
//
// Traverse's kernel fast path for channel-bound UDP relaying (RFC 8656 §12), IPv4.
//
// client -> peer: ChannelData from a client's 5-tuple to a listener, with a channel the map knows: strip the
//                 4-byte header, rewrite to (relay address -> peer), transmit.
// peer -> client: UDP from a bound peer to its relay port: prepend the ChannelData header, rewrite to
//                 (listener -> client), transmit.
// Everything else returns XDP_PASS unchanged: the socket path (user space) stays the authority and handles STUN,
// Send/Data indications, unknown channels, fragments, IP options, expired entries, spent credit, packets too big for
// the egress MTU and anything whose route or neighbour the kernel does not know yet.
//
// User space writes every map; this program only reads the routes, decrements a credit and counts. Addresses and
// ports in keys and values are in network byte order, as on the wire, so no conversion happens per packet.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef AF_INET
#define AF_INET 2
#endif

#define MAX_ENTRIES 262144
#define HEADERS (sizeof(struct ethhdr) + sizeof(struct iphdr) + sizeof(struct udphdr))
#define CHANNEL_HEADER 4

// Which allocation a route belongs to: the worker, its slot and generation (turn::AllocationId).
struct alloc_key {
	__u32 worker;
	__u32 slot;
	__u32 generation;
	__u32 pad;
};

// What a ChannelData datagram from a client carries.
struct client_key {
	__u32 client_ip;
	__u32 server_ip;
	__u16 client_port;
	__u16 server_port;
	__u16 channel;
	__u16 pad;
};

// `flags` of a route to a peer: the allocation asked for DONT-FRAGMENT (RFC 8656 §14.8), so DF is set toward the
// peer; without it DF is cleared, as the socket path sends.
#define ROUTE_DONT_FRAGMENT 1

struct to_peer {
	__u32 relay_ip;
	__u32 peer_ip;
	__u16 relay_port;
	__u16 peer_port;
	__u32 flags;
	// CLOCK_MONOTONIC nanoseconds (bpf_ktime_get_ns): min(channel, permission, allocation) expiry.
	__u64 expires_ns;
	struct alloc_key alloc;
};

// What a datagram from a peer to a relay port carries.
struct peer_key {
	__u32 peer_ip;
	__u32 relay_ip;
	__u16 peer_port;
	__u16 relay_port;
};

struct to_client {
	__u32 server_ip;
	__u32 client_ip;
	__u16 server_port;
	__u16 client_port;
	__u16 channel;
	__u16 pad;
	__u64 expires_ns;
	struct alloc_key alloc;
};

// Per-CPU, per allocation: what the fast path relayed (payload bytes, as the socket path counts them).
struct counters {
	__u64 to_peer_packets;
	__u64 to_peer_bytes;
	__u64 to_client_packets;
	__u64 to_client_bytes;
};

// Per allocation with a bandwidth cap: payload bytes user space granted from the allocation's token bucket. Absent
// means no cap.
struct credit {
	__s64 bytes;
};

// Preallocated maps (a map without preallocation cost ~8 % more of the core at 200 000 echoes/s of 1000 B in
// bench/relay-xdp.sh). The per-allocation ones (COUNTERS, per CPU, and CREDITS) are sized at load to the server's
// allocation capacity: at MAX_ENTRIES they held tens of MB per CPU whatever the load. A preallocated entry replaced
// by user space may be reused while a program reads it, so each route is copied once, right after its look-up.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENTRIES);
	__type(key, struct client_key);
	__type(value, struct to_peer);
} CLIENT_ROUTES SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENTRIES);
	__type(key, struct peer_key);
	__type(value, struct to_client);
} PEER_ROUTES SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, MAX_ENTRIES);
	__type(key, struct alloc_key);
	__type(value, struct counters);
} COUNTERS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_ENTRIES);
	__type(key, struct alloc_key);
	__type(value, struct credit);
} CREDITS SEC(".maps");

// The interfaces the program is attached to (ifindex -> 1), written at attach. A packet is rewritten only when its
// route leaves through one of them: a redirect to an interface without XDP would drop it (many drivers transmit
// XDP frames only with a program of their own loaded), after it was counted. Any other egress takes the socket path.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u32);
} EGRESS SEC(".maps");

// Ones' complement arithmetic (RFC 1071, RFC 1624): byte-order independent, so words are used as loaded.
static __always_inline __u16 fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

static __always_inline __u32 replace16(__u32 sum, __u16 old, __u16 new)
{
	return sum + (__u16)~old + new;
}

static __always_inline __u32 replace32(__u32 sum, __u32 old, __u32 new)
{
	sum = replace16(sum, (__u16)old, (__u16)new);
	return replace16(sum, (__u16)(old >> 16), (__u16)(new >> 16));
}

static __always_inline void ip_checksum(struct iphdr *ip)
{
	__u16 *w = (__u16 *)ip;
	__u32 sum = 0;
	ip->check = 0;
#pragma unroll
	for (int i = 0; i < (int)(sizeof(struct iphdr) / 2); i++)
		sum += w[i];
	ip->check = ~fold(sum);
}

// Takes `len` payload bytes from the allocation's credit; false when a cap is set and the credit is spent.
static __always_inline int take_credit(struct alloc_key *alloc, __u64 len)
{
	struct credit *c = bpf_map_lookup_elem(&CREDITS, alloc);
	if (!c)
		return 1;
	if (c->bytes < (__s64)len)
		return 0;
	__sync_fetch_and_add(&c->bytes, -(__s64)len);
	return 1;
}

static __always_inline void count(struct alloc_key *alloc, int to_peer, __u64 len)
{
	struct counters *c = bpf_map_lookup_elem(&COUNTERS, alloc);
	if (!c)
		return;
	if (to_peer) {
		c->to_peer_packets += 1;
		c->to_peer_bytes += len;
	} else {
		c->to_client_packets += 1;
		c->to_client_bytes += len;
	}
}

// The route and neighbour for the rewritten packet; XDP_TX back out of the ingress interface or a redirect to another
// attached one (EGRESS). Any failure (no neighbour yet, too big for the egress MTU, forwarding disabled, an egress
// without the program) passes the original to the socket path, which is why the look-up happens before the packet is
// changed.
static __always_inline int route(struct xdp_md *ctx, struct bpf_fib_lookup *fib, __u32 src, __u32 dst, __u16 sport,
				 __u16 dport, __u16 tot_len)
{
	__builtin_memset(fib, 0, sizeof(*fib));
	fib->family = AF_INET;
	fib->l4_protocol = IPPROTO_UDP;
	fib->sport = sport;
	fib->dport = dport;
	fib->tot_len = tot_len;
	fib->ipv4_src = src;
	fib->ipv4_dst = dst;
	fib->ifindex = ctx->ingress_ifindex;
	int found = bpf_fib_lookup(ctx, fib, sizeof(*fib), 0);
	if (found != BPF_FIB_LKUP_RET_SUCCESS)
		return found;
	// Out of the interface it came in on (XDP_TX), or another one the program is attached to.
	__u32 out = fib->ifindex;
	if (out != ctx->ingress_ifindex && !bpf_map_lookup_elem(&EGRESS, &out))
		return BPF_FIB_LKUP_RET_NOT_FWDED;
	return BPF_FIB_LKUP_RET_SUCCESS;
}

static __always_inline int transmit(struct xdp_md *ctx, struct bpf_fib_lookup *fib)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return XDP_ABORTED;
	__builtin_memcpy(eth->h_dest, fib->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib->smac, ETH_ALEN);
	if (fib->ifindex == ctx->ingress_ifindex)
		return XDP_TX;
	return bpf_redirect(fib->ifindex, 0);
}

// RFC 8656 §12.6: ChannelData -> UDP to the peer, from the relay address.
static __always_inline int client_to_peer(struct xdp_md *ctx, struct iphdr *ip, struct udphdr *udp, __u16 udp_len)
{
	void *data_end = (void *)(long)ctx->data_end;
	__u8 *cd = (__u8 *)(udp + 1);
	if ((void *)(cd + CHANNEL_HEADER) > data_end)
		return XDP_PASS;
	__u16 channel = *(__u16 *)cd;
	__u16 length_be = *(__u16 *)(cd + 2);
	__u16 length = bpf_ntohs(length_be);
	// Exactly the header and the payload: padded or truncated datagrams take the socket path.
	if ((__u32)length + CHANNEL_HEADER + sizeof(struct udphdr) != udp_len)
		return XDP_PASS;
	struct client_key key = {
		.client_ip = ip->saddr,
		.server_ip = ip->daddr,
		.client_port = udp->source,
		.server_port = udp->dest,
		.channel = channel,
	};
	struct to_peer *found = bpf_map_lookup_elem(&CLIENT_ROUTES, &key);
	if (!found)
		return XDP_PASS;
	struct to_peer route_copy = *found;
	struct to_peer *r = &route_copy;
	if (r->expires_ns <= bpf_ktime_get_ns())
		return XDP_PASS;
	struct bpf_fib_lookup fib;
	__u16 new_tot = bpf_ntohs(ip->tot_len) - CHANNEL_HEADER;
	if (route(ctx, &fib, r->relay_ip, r->peer_ip, r->relay_port, r->peer_port, new_tot) != BPF_FIB_LKUP_RET_SUCCESS)
		return XDP_PASS;
	struct alloc_key alloc = r->alloc;
	if (!take_credit(&alloc, length))
		return XDP_PASS;

	// UDP checksum, incrementally: addresses, ports, the length (pseudo-header and header) change, and the two
	// words of the ChannelData header leave. A zero checksum (none, IPv4) stays none.
	__u16 check = udp->check;
	__u16 new_udp_len = bpf_htons(udp_len - CHANNEL_HEADER);
	if (check) {
		__u32 sum = (__u16)~check;
		sum = replace32(sum, ip->saddr, r->relay_ip);
		sum = replace32(sum, ip->daddr, r->peer_ip);
		sum = replace16(sum, udp->source, r->relay_port);
		sum = replace16(sum, udp->dest, r->peer_port);
		sum = replace16(sum, udp->len, new_udp_len);
		sum = replace16(sum, udp->len, new_udp_len);
		sum += (__u16)~channel;
		sum += (__u16)~length_be;
		check = ~fold(sum);
		if (!check)
			check = 0xffff;
	}
	struct iphdr new_ip = *ip;
	new_ip.saddr = r->relay_ip;
	new_ip.daddr = r->peer_ip;
	new_ip.tot_len = bpf_htons(new_tot);
	new_ip.ttl = 64;
	// Not the client's DF: the allocation's (no fragment offset or MF here: those took the socket path).
	new_ip.frag_off = (r->flags & ROUTE_DONT_FRAGMENT) ? bpf_htons(0x4000) : 0;
	struct udphdr new_udp = {
		.source = r->relay_port,
		.dest = r->peer_port,
		.len = new_udp_len,
		.check = check,
	};
	// The headers move 4 bytes towards the payload, over the ChannelData header; then the head follows them.
	if (bpf_xdp_adjust_head(ctx, CHANNEL_HEADER))
		return XDP_PASS;
	void *data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (data + HEADERS > data_end)
		return XDP_ABORTED;
	struct iphdr *nip = data + sizeof(struct ethhdr);
	struct udphdr *nudp = (void *)(nip + 1);
	((struct ethhdr *)data)->h_proto = bpf_htons(ETH_P_IP);
	*nip = new_ip;
	ip_checksum(nip);
	*nudp = new_udp;
	count(&alloc, 1, length);
	return transmit(ctx, &fib);
}

// RFC 8656 §12.5: UDP from a bound peer -> ChannelData to the client, from the listener.
static __always_inline int peer_to_client(struct xdp_md *ctx, struct iphdr *ip, struct udphdr *udp, __u16 udp_len)
{
	struct peer_key key = {
		.peer_ip = ip->saddr,
		.relay_ip = ip->daddr,
		.peer_port = udp->source,
		.relay_port = udp->dest,
	};
	struct to_client *found = bpf_map_lookup_elem(&PEER_ROUTES, &key);
	if (!found)
		return XDP_PASS;
	struct to_client route_copy = *found;
	struct to_client *r = &route_copy;
	if (r->expires_ns <= bpf_ktime_get_ns())
		return XDP_PASS;
	__u16 payload = udp_len - sizeof(struct udphdr);
	__u16 length_be = bpf_htons(payload);
	__u16 new_tot = bpf_ntohs(ip->tot_len) + CHANNEL_HEADER;
	struct bpf_fib_lookup fib;
	if (route(ctx, &fib, r->server_ip, r->client_ip, r->server_port, r->client_port, new_tot) !=
	    BPF_FIB_LKUP_RET_SUCCESS)
		return XDP_PASS;
	struct alloc_key alloc = r->alloc;
	if (!take_credit(&alloc, payload))
		return XDP_PASS;

	__u16 check = udp->check;
	__u16 new_udp_len = bpf_htons(udp_len + CHANNEL_HEADER);
	__u32 sum = (__u16)~check;
	if (!check) {
		// The peer sent no checksum: none can be updated, so one is not invented either (RFC 768 allows it).
		sum = 0;
	}
	sum = replace32(sum, ip->saddr, r->server_ip);
	sum = replace32(sum, ip->daddr, r->client_ip);
	sum = replace16(sum, udp->source, r->server_port);
	sum = replace16(sum, udp->dest, r->client_port);
	sum = replace16(sum, udp->len, new_udp_len);
	sum = replace16(sum, udp->len, new_udp_len);
	sum += r->channel;
	sum += length_be;
	if (check) {
		check = ~fold(sum);
		if (!check)
			check = 0xffff;
	}
	struct iphdr new_ip = *ip;
	new_ip.saddr = r->server_ip;
	new_ip.daddr = r->client_ip;
	new_ip.tot_len = bpf_htons(new_tot);
	new_ip.ttl = 64;
	struct udphdr new_udp = {
		.source = r->server_port,
		.dest = r->client_port,
		.len = new_udp_len,
		.check = check,
	};
	__u16 channel = r->channel;
	if (bpf_xdp_adjust_head(ctx, -CHANNEL_HEADER))
		return XDP_PASS;
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	if (data + HEADERS + CHANNEL_HEADER > data_end)
		return XDP_ABORTED;
	struct iphdr *nip = data + sizeof(struct ethhdr);
	struct udphdr *nudp = (void *)(nip + 1);
	__u16 *cd = (void *)(nudp + 1);
	((struct ethhdr *)data)->h_proto = bpf_htons(ETH_P_IP);
	*nip = new_ip;
	ip_checksum(nip);
	*nudp = new_udp;
	cd[0] = channel;
	cd[1] = length_be;
	count(&alloc, 0, payload);
	return transmit(ctx, &fib);
}

SEC("xdp")
int traverse_relay(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if (data + HEADERS > data_end)
		return XDP_PASS;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	struct iphdr *ip = (void *)(eth + 1);
	// No IP options, no fragments (MF set or an offset), UDP only.
	if (ip->ihl != 5 || ip->version != 4 || ip->protocol != IPPROTO_UDP)
		return XDP_PASS;
	if (ip->frag_off & bpf_htons(0x3fff))
		return XDP_PASS;
	struct udphdr *udp = (void *)(ip + 1);
	__u16 udp_len = bpf_ntohs(udp->len);
	// The lengths must agree with each other and with what arrived (Ethernet may pad short frames).
	if (udp_len < sizeof(struct udphdr) || bpf_ntohs(ip->tot_len) != sizeof(struct iphdr) + udp_len)
		return XDP_PASS;
	if ((void *)udp + udp_len > data_end)
		return XDP_PASS;
	if (udp_len >= sizeof(struct udphdr) + CHANNEL_HEADER) {
		__u8 *first = (__u8 *)(udp + 1);
		if ((void *)(first + 1) <= data_end && (*first & 0xc0) == 0x40) {
			int action = client_to_peer(ctx, ip, udp, udp_len);
			if (action != XDP_PASS)
				return action;
			// Not a known channel of a client: it may still be a peer's datagram that starts with 0x4.
			data = (void *)(long)ctx->data;
			data_end = (void *)(long)ctx->data_end;
			if (data + HEADERS > data_end)
				return XDP_PASS;
			ip = data + sizeof(struct ethhdr);
			udp = (void *)(ip + 1);
		}
	}
	return peer_to_client(ctx, ip, udp, udp_len);
}

// The kernel takes the GPL side of the dual licence: bpf_fib_lookup is offered to GPL-compatible programs only.
char LICENSE[] SEC("license") = "GPL";
