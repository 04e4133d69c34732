/*
 * Ferry's test guest: a multiboot (v1) kernel of a few hundred bytes that
 * QEMU boots with -kernel, so a real VM has memory whose content after a
 * migration can be checked without an operating system.
 *
 * 1. It fills [pattern_addr, +pattern_len) with a xorshift32 stream from
 *    seed (x ^= x<<13; x ^= x>>17; x ^= x<<5; each new x is the next
 *    32-bit word), then sets status to 1. The host recomputes the stream
 *    and compares it with guest memory read with pmemsave.
 * 2. It then zeroes the first word of every page of [dirty_addr,
 *    +dirty_len) and dirties that region for ever, one page at a
 *    time: it increments the page's first word and the pages counter,
 *    and after the last page the generation counter. So page i's first
 *    word is the number of passes that wrote it: pages / npages + 1 for
 *    i < pages % npages, pages / npages for the rest — also checkable.
 *    Between two pages it waits ticks_per_page ticks of the ACPI PM
 *    timer (3.579545 MHz, 24 bits, at I/O port pm_port; a device clock
 *    that stops while the VM is paused), which sets the dirty rate;
 *    0 dirties as fast as the CPU goes.
 *
 * The host patches the parameters into its copy of the image; the
 * counters are read back from guest memory at the same addresses
 * (image offset + 0x100000).
 *
 * Build (the committed guest.bin; `make guest` redoes it):
 *   as --32 -o guest.o guest.S
 *   ld -m elf_i386 -Ttext=0x100000 --oformat=binary -o guest.bin guest.o
 */
	.code32
	.text
	.globl _start
_start:
header:					/* offset 0: multiboot header */
	.long 0x1BADB002		/* magic */
	.long 0x00010000		/* flags: the address fields below are valid */
	.long -(0x1BADB002 + 0x00010000)
	.long header			/* header_addr */
	.long _start			/* load_addr */
	.long end			/* load_end_addr */
	.long 0				/* bss_end_addr: none */
	.long entry			/* entry_addr */

params:					/* offset 32: set by the host */
pattern_addr:	.long 0x00200000
pattern_len:	.long 0
seed:		.long 0x9E3779B9
dirty_addr:	.long 0
dirty_len:	.long 0
ticks_per_page:	.long 0
pm_port:	.long 0x608
counters:				/* offset 60: written by the guest */
status:		.long 0
generation:	.long 0
pages:		.long 0

entry:
	cli
	movl	$0x9F000, %esp

	/* 1. the pattern */
	movl	pattern_addr, %edi
	movl	pattern_len, %ecx
	shrl	$2, %ecx
	movl	seed, %eax
	testl	%ecx, %ecx
	jz	2f
1:	movl	%eax, %edx
	shll	$13, %edx
	xorl	%edx, %eax
	movl	%eax, %edx
	shrl	$17, %edx
	xorl	%edx, %eax
	movl	%eax, %edx
	shll	$5, %edx
	xorl	%edx, %eax
	stosl
	decl	%ecx
	jnz	1b
2:	movl	$1, status

	/* 2. the dirtying loop */
	movl	dirty_addr, %edi
	movl	%edi, %ebx
	addl	dirty_len, %ebx		/* ebx: end of the region */
	cmpl	%edi, %ebx
	je	idle
	movl	%edi, %ecx		/* memory is not zero at boot: start */
3:	movl	$0, (%ecx)		/* every page's count at 0 */
	addl	$4096, %ecx
	cmpl	%ebx, %ecx
	jb	3b
	movl	pm_port, %edx
	inl	(%dx), %eax
	andl	$0xFFFFFF, %eax
	movl	%eax, %ebp		/* ebp: last timer reading */
	xorl	%esi, %esi		/* esi: ticks not yet spent */
pace:
	cmpl	$0, ticks_per_page
	je	write
wait:
	inl	(%dx), %eax
	andl	$0xFFFFFF, %eax
	movl	%eax, %ecx
	subl	%ebp, %ecx
	andl	$0xFFFFFF, %ecx		/* ticks since the last reading, mod 2^24 */
	movl	%eax, %ebp
	addl	%ecx, %esi
	cmpl	ticks_per_page, %esi
	jb	wait
	subl	ticks_per_page, %esi
write:
	incl	(%edi)
	incl	pages
	addl	$4096, %edi
	cmpl	%ebx, %edi
	jb	pace
	movl	dirty_addr, %edi
	incl	generation
	jmp	pace

idle:
	hlt
	jmp	idle
end:
