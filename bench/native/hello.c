/* The baseline for kiln's cold-start benchmark: a native static hello world. */
#include <unistd.h>

int main(void) {
    static const char msg[] = "Hello from a native process!\n";
    return write(1, msg, sizeof msg - 1) == sizeof msg - 1 ? 0 : 1;
}
