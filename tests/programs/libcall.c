/* libcall: calls libc's toupper() a known number of times.
 *
 * toupper was chosen because it has its own address in libc.so.6 (no alias prints
 * under another name), is patchable (no branch into its first bytes) and is not called
 * by libc itself during start-up, printf or exit.  The call goes through a volatile
 * function pointer so that gcc neither folds nor inlines it.
 *
 * Usage: libcall [N]    stdout: "count toupper N" and "checksum C".
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>

int (*volatile upper_fn)(int) = toupper;

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 300;
    long count_toupper = 0, checksum = 0;

    for (int i = 0; i < n; i++) {
        count_toupper++;
        checksum += upper_fn('a' + i % 26);
    }
    printf("count toupper %ld\n", count_toupper);
    printf("checksum %ld\n", checksum);
    return 0;
}
